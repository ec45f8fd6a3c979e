"""The libraries a binary needs (DT_NEEDED, transitively), found the way ld.so would on this host.

Used by `hotpatch build` to tell, before any process is involved, whether a
name the patch uses exists anywhere the target could reach.
"""

import os

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from hotpatch.errors import ELFFormatError

COMMON_DIRS = ("/lib", "/usr/lib", "/usr/local/lib")


def _dynamic(path: str) -> tuple[str | None, list[str], list[str]]:
    """DT_SONAME (None without one), DT_NEEDED names and the run path ($ORIGIN expanded) of an ELF file."""
    soname, needed, runpath = None, [], []
    with open(path, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            if isinstance(sec, DynamicSection):
                for tag in sec.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(getattr(tag, "needed"))
                    elif tag.entry.d_tag == "DT_SONAME":
                        soname = getattr(tag, "soname")
                    elif tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                        origin = os.path.dirname(os.path.abspath(path))
                        runpath += [p.replace("$ORIGIN", origin) for p in
                                    getattr(tag, "runpath", getattr(tag, "rpath", "")).split(":") if p]
    return soname, needed, runpath


def soname_and_needed(path: str) -> tuple[str | None, list[str]]:
    """DT_SONAME (None without one) and DT_NEEDED names of an ELF file; ELFFormatError if unreadable."""
    try:
        soname, needed, _runpath = _dynamic(path)
    except (ELFError, OSError, ValueError) as e:
        raise ELFFormatError(f"cannot read the dynamic section of {path}: {e}") from e
    return soname, needed


def needed_closure(binary: str, library_dirs: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(paths found, names not found), breadth-first like ld.so's search order.

    library_dirs: the architecture's own directories (Arch.library_dirs),
    searched after the binary's runpath and before the common ones.
    """
    found, missing, seen = [], [], set()
    try:
        _soname, queue, runpath = _dynamic(binary)
    except (ELFError, OSError, ValueError) as e:
        raise ELFFormatError(f"cannot read the dynamic section of {binary}: {e}") from e
    dirs = [*runpath, *library_dirs, *COMMON_DIRS]
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
            queue += _dynamic(path)[1]
        except (ELFError, OSError, ValueError) as e:
            # Its own needs are unknown: the caller cannot vouch for a name then.
            missing.append(f"{name}'s dependencies ({e})")
    return found, missing
