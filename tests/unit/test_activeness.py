"""The activeness check: the stack-word scan agrees with a plain word-by-word scan; busy threads
are found by pc, code register or stack word, each thread's words aligned."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotpatch.safety.activeness import ADDRESS_BITS, MAX_NEEDLES, GuardedRange, RangeSet, Snapshot, find_busy


def naive(data, ranges):
    """The first whole 8-byte word whose low 48 bits (PAC bits stripped) lie in a range."""
    for off in range(0, len(data) - 7, 8):
        (v,) = struct.unpack_from("<Q", data, off)
        for r in ranges:
            if r.start <= v & ADDRESS_BITS < r.end:
                return off
    return None


ADDR = st.sampled_from([0x5555_5555_0000, 0x5555_55FF_FF00, 0x7F00_0000_0000, 0x40_0000, 0xFFFF_FF00])
NEAR = st.tuples(ADDR, st.integers(-0x100, 0x5_0000)).map(lambda t: max(0, t[0] + t[1]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(ADDR, st.integers(0, 0x2_0000), st.integers(1, 0x3_0000)), min_size=1, max_size=4),
       st.lists(st.one_of(st.integers(0, (1 << 64) - 1), NEAR,
                          st.tuples(NEAR, st.integers(1, 0xFFFF)).map(lambda t: t[0] | t[1] << 48)),   # PAC-signed
                max_size=64),
       st.integers(0, 7), st.integers(0, 0x2_0000))
def test_scan_matches_naive(spans, words, junk, into):
    """Words plain, near the ranges, or PAC-signed (AArch64: a signature in bits 48..63); `end` cuts a
    word short (junk bytes of it kept), and past `end` lies a word inside a range: neither the partial
    word nor anything past `end` may count."""
    ranges = [GuardedRange(a + o, a + o + n, "f") for a, o, n in spans]
    inside = ranges[0].start + into % (ranges[0].end - ranges[0].start)
    data = b"".join(struct.pack("<Q", w) for w in words) + struct.pack("<Q", inside) * 2
    end = 8 * len(words) + junk
    rs = RangeSet(ranges)
    hit = rs.scan_words(data, end)
    assert (hit[0] if hit else None) == naive(data[:end], rs.ranges)


@pytest.mark.parametrize("start", [0x5555_5555_1000, 0xAAAA_AAAA_0FF0, 0x7F12_3456_7000, 0x40_1000])
@pytest.mark.parametrize("signature", [0x007F << 48, 0x3A00 << 48, 0xFF7F << 48])   # bits 48..54, 56..63
def test_pac_signed_return_addresses_count(start, signature):
    """AArch64 -mbranch-protection: a return address on the stack carries its signature in the top bits."""
    rs = RangeSet([GuardedRange(start, start + 0x40, "leaf")])
    stack = struct.pack("<4Q", 0, start - 8, (start + 0x40) | signature, (start + 0x3C) | signature)
    assert rs.scan_words(stack) == (24, rs.ranges[0])
    busy = find_busy(snap((7, 0x9000, stack)), rs)
    assert (busy.tid, busy.how, busy.address) == (7, "will return into", start + 0x3C)


def test_pac_signed_return_address_into_a_low_function_crossing_64k():
    # A range below 16 MiB crossing a 64 KiB boundary (non-PIE): its needle once was zeros up to bit 63,
    # so a word carrying a PAC in its top bits was never found.
    rs = RangeSet([GuardedRange(0x40_FFF0, 0x41_0010, "crossing")])
    assert rs.scan_words(struct.pack("<Q", 0x0012_0000_0041_0004)) == (0, rs.ranges[0])


def test_many_ranges_share_a_few_needles_and_still_match_naive():
    # 300 functions of 48 bytes spread over 96 KiB: one needle each would mean
    # 300 passes over every stack.
    base = 0x5555_5555_0000
    ranges = [GuardedRange(base + i * 320, base + i * 320 + 48, f"f{i}") for i in range(300)]
    rs = RangeSet(ranges)
    assert len(rs.needles) <= MAX_NEEDLES
    inside, between = base + 77 * 320 + 40, base + 77 * 320 + 100
    for words in ([between] * 50, [between] * 50 + [inside], [7, inside, between]):
        data = struct.pack(f"<{len(words)}Q", *words)
        hit = rs.scan_words(data)
        assert (hit[0] if hit else None) == naive(data, rs.ranges)


def snap(*threads):
    return Snapshot.join([(tid, (pc,), stack) for tid, pc, stack in threads])


def test_find_busy_reports_pc_then_stack():
    rs = RangeSet([GuardedRange(0x1000, 0x1100, "compute")])
    idle = (1, 0x5000, struct.pack("<QQ", 0x2000, 0x3000))
    assert find_busy(snap(idle), rs) is None
    running = (2, 0x1010, b"")
    busy = find_busy(snap(idle, running), rs)
    assert (busy.tid, busy.how, busy.address) == (2, "is executing", 0x1010)
    returning = (3, 0x5000, struct.pack("<QQ", 7, 0x10ff))
    busy = find_busy(snap(idle, returning), rs)
    assert (busy.tid, busy.how, busy.label, busy.address) == (3, "will return into", "compute", 0x10ff)
    # a pc beats a return address, whatever the thread order
    assert find_busy(snap(returning, running), rs).tid == 2
    unaligned = (4, 0x5000, b"\0" + struct.pack("<Q", 0x1010) + b"\0" * 7)
    assert find_busy(snap(unaligned), rs) is None


def test_stacks_of_odd_length_keep_each_thread_word_aligned():
    rs = RangeSet([GuardedRange(0x1000, 0x1100, "compute")])
    ragged = (1, 0x5000, b"\xAA" * 13)          # 13 bytes: only the first word counts
    returning = (2, 0x5000, struct.pack("<Q", 0x1010))
    busy = find_busy(snap(ragged, returning), rs)
    assert (busy.tid, busy.address) == (2, 0x1010)


def test_second_code_pointer_is_a_return_address():
    rs = RangeSet([GuardedRange(0x1000, 0x1100, "leaf")])
    s = Snapshot.join([(1, (0x5000, 0x7000), b""), (2, (0x5000, 0x1004), b"")])
    busy = find_busy(s, rs)
    assert (busy.tid, busy.how, busy.address) == (2, "will return into", 0x1004)
