"""Where to map a patch image: a free hole within branch reach of the patched module."""

from hotpatch.process.maps import Mapping

MMAP_MIN_ADDR = 0x10000
USER_TOP = 0x7FFF_FFFF_F000
HEAP_GROWTH_ROOM = 256 << 20    # keep brk free to grow
STACK_GROWTH_ROOM = 64 << 20    # and the main stack


def candidate_addresses(maps: list[Mapping], lo: int, hi: int, size: int, page: int,
                        reach: int) -> list[int]:
    """Addresses where [a, a+size) is free and every byte of it is within `reach` of all of [lo, hi).

    Nearest first. Empty when no hole is near enough (the caller then maps
    anywhere and uses the far branch forms).
    """
    spans = sorted((m.start, m.end, m.path) for m in maps)
    reserved = []
    for start, end, path in spans:
        if path == "[heap]":
            reserved.append((end, end + HEAP_GROWTH_ROOM))
        elif path == "[stack]":
            reserved.append((max(start - STACK_GROWTH_ROOM, 0), start))
    holes = []
    prev_end = MMAP_MIN_ADDR
    for start, end, _ in spans + [(USER_TOP, USER_TOP, "")]:
        if start > prev_end:
            holes.append((prev_end, start))
        prev_end = max(prev_end, end)
    free = []
    for hs, he in holes:
        pieces = [(hs, he)]
        for rs, re_ in reserved:
            pieces = [p for a, b in pieces for p in ((a, min(b, rs)), (max(a, re_), b)) if p[1] > p[0]]
        free.extend(pieces)
    out = []
    for hs, he in free:
        hs, he = _round_up(hs + page, page), (he - page) // page * page   # a guard page each side
        if he - hs < size:
            continue
        addr = he - size if he <= lo else hs if hs >= hi else (hs if abs(hs - hi) < abs(he - size - lo) else he - size)
        if max(hi, addr + size) - min(lo, addr) <= reach:
            out.append(addr)
    return sorted(out, key=lambda a: max(abs(a - lo), abs(a + size - hi)))


def _round_up(value: int, page: int) -> int:
    return (value + page - 1) // page * page
