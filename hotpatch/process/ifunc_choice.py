"""Which implementation of an IFUNC a process's loader would choose, told without running code in it.

The resolver of a glibc IFUNC (strlen, strcasecmp, memcpy) chooses by the CPU's features, as the loader
reports them (cpu_features), adjusted by GLIBC_TUNABLES. hotpatch runs on the same machine; when it has
the very same library loaded (same build-id) and the process sets no tunables hotpatch does not, the
implementation its own loader chose, at the same offset in the library, is the process's.
"""

import ctypes
import os

from hotpatch.elf.image import ElfImage, load_bias
from hotpatch.errors import ELFFormatError

TUNING = ("GLIBC_TUNABLES", "LD_HWCAP_MASK", "LD_BIND_NOT")


def unavailable(pid: int, build_id: str | None) -> str | None:
    """Why hotpatch's own choice cannot stand for the process's, or None."""
    if not build_id or _own_library(build_id) is None:
        return "hotpatch does not have the same library loaded (a different build of it, or none)"
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            theirs = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    except OSError as e:
        return f"its environment cannot be read ({e.strerror})"
    for name in TUNING:
        if theirs.get(name.encode()) != (os.environb.get(name.encode())):
            return f"it was started with {name} different from hotpatch's"
    return None


def own_offset(name: str, build_id: str) -> int | None:
    """The offset in the library of the implementation hotpatch's loader bound `name` to."""
    found = _own_library(build_id)
    if found is None:
        return None
    path, bias = found
    try:
        handle = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)   # already loaded: nothing runs
        address = ctypes.cast(getattr(handle, name), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    return address - bias if address else None


def _own_library(build_id: str) -> tuple[str, int] | None:
    """(path, load bias) of the library with that build-id in hotpatch's own process."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    seen = set()
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/") or int(parts[2], 16) != 0 or parts[5] in seen:
            continue
        seen.add(parts[5])
        try:
            image = ElfImage.from_path(parts[5])
        except (ELFFormatError, OSError):
            continue
        if image.build_id == build_id:
            return parts[5], load_bias(int(parts[0].split("-")[0], 16), image.phdrs)
    return None
