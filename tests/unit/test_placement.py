"""Image placement from a maps listing: near the module, free, clear of the heap's growth."""

from hotpatch.live.placement import HEAP_GROWTH_ROOM, candidate_addresses
from hotpatch.process.maps import parse_maps

MAPS = """\
555555554000-555555556000 r--p 00000000 fd:01 100 /usr/bin/svc
555555556000-555555558000 r-xp 00002000 fd:01 100 /usr/bin/svc
555555558000-55555555a000 rw-p 00004000 fd:01 100 /usr/bin/svc
55555555a000-55555557b000 rw-p 00000000 00:00 0 [heap]
7ffff7d80000-7ffff7f90000 r-xp 00000000 fd:01 200 /usr/lib/libc.so.6
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]
"""


def test_candidates_near_and_free():
    maps = parse_maps(MAPS)
    lo, hi = 0x555555554000, 0x55555555a000
    cands = candidate_addresses(maps, lo, hi, 0x3000, 4096, (1 << 31) - 1)
    assert cands
    first = cands[0]
    assert first + 0x3000 <= lo - 4096             # just below the executable, a guard page between
    for a in cands:
        assert max(hi, a + 0x3000) - min(lo, a) < 1 << 31
        assert all(a + 0x3000 <= m.start or a >= m.end for m in maps)
        assert not (0x55555557b000 <= a < 0x55555557b000 + HEAP_GROWTH_ROOM)


def test_no_candidate_when_everything_near_is_taken():
    maps = parse_maps("10000-7fff10000000 rw-p 00000000 00:00 0\n"
                      "7fff10000000-7fff10001000 r-xp 00000000 fd:01 1 /bin/x\n"
                      "7fff10001000-7fff20000000 rw-p 00000000 00:00 0\n")
    assert candidate_addresses(maps, 0x7fff10000000, 0x7fff10001000, 0x1000, 4096, 1 << 20) == []
