"""The libraries a binary needs (DT_NEEDED, transitively), found the way ld.so would on this host.

Used by `hotpatch build` to tell, before any process is involved, whether a
name the patch uses exists anywhere the target could reach.
"""

import os

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

LIB_DIRS = {
    "x86_64": ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"],
    "aarch64": ["/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/aarch64-linux-gnu/lib"],
}
COMMON_DIRS = ["/lib", "/usr/lib", "/usr/local/lib"]


def _dynamic(path: str) -> tuple[list[str], list[str]]:
    needed, runpath = [], []
    with open(path, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if isinstance(sec, DynamicSection):
                for tag in sec.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                        origin = os.path.dirname(os.path.abspath(path))
                        runpath += [p.replace("$ORIGIN", origin) for p in
                                    getattr(tag, "runpath", getattr(tag, "rpath", "")).split(":") if p]
    return needed, runpath


def needed_closure(binary: str, arch: str) -> tuple[list[str], list[str]]:
    """(paths found, names not found), breadth-first like ld.so's search order."""
    found, missing, seen = [], [], set()
    try:
        queue, runpath = _dynamic(binary)
    except (ELFError, OSError, ValueError):
        return [], []
    dirs = runpath + LIB_DIRS.get(arch, []) + COMMON_DIRS
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        path = next((os.path.join(d, name) for d in dirs if os.path.isfile(os.path.join(d, name))), None)
        if path is None:
            missing.append(name)
            continue
        found.append(path)
        try:
            queue += _dynamic(path)[0]
        except (ELFError, OSError, ValueError):
            pass
    return found, missing
