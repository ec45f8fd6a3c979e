"""The dynamic loader's own list of loaded objects (r_debug.r_map, found through the executable's DT_DEBUG),
read from the process's memory and trusted for nothing but order.

Symbols bind in the loader's global scope order: the executable, the objects
preloaded (LD_PRELOAD, /etc/ld.so.preload), then the DT_NEEDED libraries
breadth-first, which is the order they were loaded and so their order in the
link map. An object dlopen()ed later is in the link map too but not in the
global scope (unless opened RTLD_GLOBAL, which the link map does not say):
it comes after. Address order, which hotpatch used before, puts a preloaded
interposer after the libc it interposes on (mmap hands out addresses top-down).
"""

import struct

from hotpatch.errors import TraceError

DT_NULL, DT_DEBUG = 0, 21
MAX_OBJECTS = 4096        # a longer chain is corrupt (or hostile): fall back to address order
MAX_DYNAMIC = 512         # entries read from a dynamic section
LINK_MAP = struct.Struct("<QQQQQ")   # l_addr, l_name, l_ld, l_next, l_prev
R_DEBUG = struct.Struct("<i4xQ")     # r_version, r_map


def link_map(read, dynamic_address: int, r_debug_symbol=None) -> list[tuple[int, int]] | None:
    """(l_addr, l_ld) of each object in the loader's order, from the executable's dynamic section at
    `dynamic_address` (DT_DEBUG), else from the loader's own `_r_debug` at `r_debug_symbol` (AArch64 keeps
    .dynamic read-only, so DT_DEBUG stays 0 there); None when there is no list (a static binary) or it
    cannot be read whole. `read(address, size)` reads the process's memory."""
    try:
        r_debug = _dt_debug(read, dynamic_address) or (r_debug_symbol() if callable(r_debug_symbol)
                                                        else r_debug_symbol)
        if not r_debug:
            return None
        version, entry = R_DEBUG.unpack(read(r_debug, R_DEBUG.size))
        if version < 1:
            return None
        out, seen = [], set()
        while entry and len(out) < MAX_OBJECTS:
            if entry in seen:
                return None   # a cycle: not the loader's list
            seen.add(entry)
            l_addr, _l_name, l_ld, l_next, _l_prev = LINK_MAP.unpack(read(entry, LINK_MAP.size))
            out.append((l_addr, l_ld))
            entry = l_next
        return out if not entry else None
    except (TraceError, struct.error):
        return None


def _dt_debug(read, dynamic_address: int) -> int:
    for tag, value in _dynamic_entries(read, dynamic_address):
        if tag == DT_NULL:
            return 0
        if tag == DT_DEBUG:
            return value
    return 0


def _dynamic_entries(read, address: int, chunk: int = 32):
    """(d_tag, d_val) pairs, read `chunk` at a time (a dynamic section has a few dozen: a read each was
    most of the walk's cost); entry by entry where the section ends near the end of its mapping."""
    for first in range(0, MAX_DYNAMIC, chunk):
        try:
            data = read(address + 16 * first, 16 * chunk)
        except TraceError:
            for i in range(first, MAX_DYNAMIC):
                yield struct.unpack("<qQ", read(address + 16 * i, 16))
            return
        yield from struct.iter_unpack("<qQ", data)
