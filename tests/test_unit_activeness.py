"""The stack-word scan agrees with a plain word-by-word scan."""

import struct

from hypothesis import given, settings, strategies as st

from hotpatch.safety.activeness import GuardedRange, RangeSet, ThreadSnapshot, find_busy


def naive(data, ranges):
    for off in range(0, len(data) - 7, 8):
        (v,) = struct.unpack_from("<Q", data, off)
        for r in ranges:
            if r.start <= v < r.end:
                return off
    return None


ADDR = st.sampled_from([0x5555_5555_0000, 0x5555_55FF_FF00, 0x7F00_0000_0000, 0x40_0000, 0xFFFF_FF00])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(ADDR, st.integers(0, 0x2_0000), st.integers(1, 0x3_0000)), min_size=1, max_size=4),
       st.lists(st.one_of(st.integers(0, (1 << 64) - 1),
                          st.tuples(ADDR, st.integers(-0x100, 0x5_0000)).map(lambda t: max(0, t[0] + t[1]))),
                max_size=64),
       st.integers(0, 7))
def test_scan_matches_naive(spans, words, junk):
    ranges = [GuardedRange(a + o, a + o + n, "f") for a, o, n in spans]
    data = b"\xAA" * 0 + b"".join(struct.pack("<Q", w) for w in words)
    rs = RangeSet(ranges)
    hit = rs.scan_words(data)
    assert (hit[0] if hit else None) == naive(data, rs.ranges)


def test_find_busy_reports_pc_then_stack():
    rs = RangeSet([GuardedRange(0x1000, 0x1100, "compute")])
    idle = ThreadSnapshot(1, 0x5000, (), 0x7000, struct.pack("<QQ", 0x2000, 0x3000))
    assert find_busy([idle], rs) is None
    running = ThreadSnapshot(2, 0x1010, (), 0x7000, b"")
    assert find_busy([idle, running], rs).how == "is executing"
    returning = ThreadSnapshot(3, 0x5000, (), 0x7000, struct.pack("<QQ", 7, 0x10ff))
    busy = find_busy([returning], rs)
    assert busy.how == "will return into" and busy.label == "compute" and busy.address == 0x10ff
    unaligned = ThreadSnapshot(4, 0x5000, (), 0x7000, b"\0" + struct.pack("<Q", 0x1010) + b"\0" * 7)
    assert find_busy([unaligned], rs) is None
