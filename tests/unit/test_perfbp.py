"""The perf_event_attr of a return breakpoint and the reading of its SIGTRAP's siginfo, against the
offsets of include/uapi/linux/perf_event.h and asm-generic/siginfo.h."""

import struct

from hotpatch.process import perfbp


def test_attr_layout():
    a = perfbp.attr(0x401234, 0x6870000000000007)
    assert len(a) == 128
    kind, size = struct.unpack_from("<II", a, 0)
    assert (kind, size) == (perfbp.PERF_TYPE_BREAKPOINT, 128)
    assert struct.unpack_from("<Q", a, 16)[0] == 1                       # sample_period: every hit
    flags = struct.unpack_from("<Q", a, 40)[0]
    assert flags & (1 << 37) and flags & (1 << 36)                        # sigtrap needs remove_on_exec
    assert flags & (1 << 5) and not flags & (1 << 4)                     # user space only
    assert struct.unpack_from("<I", a, 52)[0] == perfbp.HW_BREAKPOINT_X
    assert struct.unpack_from("<QQ", a, 56) == (0x401234, 8)             # bp_addr, bp_len
    assert struct.unpack_from("<Q", a, 120)[0] == 0x6870000000000007     # sig_data


def siginfo(code: int, data: int, kind: int) -> bytes:
    return struct.pack("<iii4xQQI", 5, 0, code, 0x401234, data, kind).ljust(128, b"\0")


def test_perf_trap_cookie():
    assert perfbp.perf_trap_cookie(siginfo(perfbp.TRAP_PERF, 42, perfbp.PERF_TYPE_BREAKPOINT)) == 42
    assert perfbp.perf_trap_cookie(siginfo(4, 42, perfbp.PERF_TYPE_BREAKPOINT)) is None   # TRAP_HWBKPT
    assert perfbp.perf_trap_cookie(siginfo(perfbp.TRAP_PERF, 42, 1)) is None             # not a breakpoint
    assert perfbp.perf_trap_cookie(b"\0" * 8) is None
