"""The DWARF expression evaluator of hotpatch/safety/unwind.py: the operations CFI uses, computed exactly;
anything else stops the walk (unreliable), never a guess."""

import struct

import pytest

from hotpatch.safety import unwind as U
from hotpatch.safety.unwind import _Stop, evaluate

M = (1 << 64) - 1
REGS = [None] * 17
REGS[7] = 0x7FFC_0000_1000     # rsp
REGS[16] = 0x5555_5555_503B    # rip
REGS[6] = 0x10
MEMORY = {0x7FFC_0000_1000: 0x1122334455667788, 0x7FFC_0000_1008: 0x7FFC_0000_2000}


def read_word(address):
    return MEMORY.get(address)


def ev(hex_expr: str, push=None, regs=REGS):
    return evaluate(bytes.fromhex(hex_expr), regs, read_word, push)


def stop(hex_expr: str, push=None, regs=REGS) -> _Stop:
    with pytest.raises(_Stop) as e:
        ev(hex_expr, push, regs)
    return e.value


def test_x86_64_plt_expression():
    """rsp + 8 + ((rip & 15) >= 11) << 3, as the linker writes it for .plt."""
    plt = "7708" "8000" "3f" "1a" "3b" "2a" "33" "24" "22"
    assert ev(plt) == REGS[7] + 16                        # rip & 15 == 11: after the push
    regs = list(REGS)
    regs[16] = 0x5555_5555_5030
    assert ev(plt, regs=regs) == regs[7] + 8


def test_glibc_restore_rt_expressions():
    MEMORY[REGS[7] + 160] = 0x7FFC_0000_3000
    try:
        assert ev("77a00106") == 0x7FFC_0000_3000          # DW_OP_breg7 160; DW_OP_deref: the CFA
        assert ev("7728") == REGS[7] + 40                  # DW_OP_breg7 40: where r8 is saved
    finally:
        del MEMORY[REGS[7] + 160]


def test_constants_and_stack_operations():
    assert ev("30") == 0 and ev("4f") == 31                # lit0, lit31
    assert ev("08ff") == 0xFF and ev("09ff") == M          # const1u, const1s
    assert ev("0a3412") == 0x1234 and ev("0bfeff") == (-2 & M)
    assert ev("0c78563412") == 0x12345678 and ev("0dfeffffff") == (-2 & M)
    assert ev("0e" + struct.pack("<Q", 1 << 63).hex()) == 1 << 63
    assert ev("0f" + struct.pack("<q", -5).hex()) == (-5 & M)
    assert ev("10e58e26") == 624485 and ev("117f") == M   # constu, consts (LEB128)
    assert ev("3132" "12" "22" "22") == 5                 # 1 2 dup + + -> 1 + 4
    assert ev("3132" "13") == 1                           # drop
    assert ev("3132" "14" "22" "22") == 4                 # over: 1 2 1 -> 4
    assert ev("313233" "1502") == 1                       # pick 2
    assert ev("3132" "16" "1c") == 1                      # swap: 2 - 1
    assert ev("313233" "17") == 2                         # rot: 1 2 3 -> 3 1 2
    assert ev("313233" "17" "1c" "1c") == 4               # 3 - (1 - 2)


def test_arithmetic_and_logic():
    assert ev("3533" "1c") == 2 and ev("3335" "1c") == (-2 & M)       # minus wraps
    assert ev("3533" "1e") == 15 and ev("3f33" "1a") == 3              # mul, and
    assert ev("3533" "21") == 7 and ev("3533" "27") == 6               # or, xor
    assert ev("35" "2304") == 9                                         # plus_uconst
    assert ev("31" "4f" "24") == 1 << 31                                 # shl
    assert ev("38" "32" "25") == 2 and ev("0bf0ff" "32" "26") == (-4 & M)   # shr, shra
    assert ev("0bf9ff" "32" "1b") == (-3 & M)                           # div truncates toward zero
    assert ev("37" "33" "1d") == 1                                      # mod
    assert ev("35" "1f") == (-5 & M) and ev("0bfbff" "19") == 5         # neg, abs
    assert ev("30" "20") == M                                           # not


def test_comparisons_are_signed():
    minus_one = "0bffff"
    assert ev(minus_one + "31" "2d") == 1                 # -1 < 1
    assert ev(minus_one + "31" "2a") == 0                 # -1 >= 1 is false
    assert ev("3131" "29") == 1 and ev("3132" "2e") == 1  # eq, ne
    assert ev("3231" "2b") == 1 and ev("3131" "2c") == 1  # gt, le


def test_branches():
    assert ev("31" "2f0100" "32") == 1                    # skip over lit2
    assert ev("31" "31" "280100" "32") == 1               # bra taken (1 != 0)
    assert ev("31" "30" "280100" "32") == 2               # bra not taken
    s = stop("2ffdff")                                    # skip back to itself forever
    assert s.end == U.UNSUPPORTED_EXPRESSION and "terminate" in s.detail
    assert stop("2f1000").detail == "branch outside the expression"


def test_memory_reads():
    assert ev("77" "00" "06") == 0x1122334455667788                # breg7 0; deref
    assert ev("77" "00" "9402") == 0x7788                          # deref_size 2
    assert ev("92" "07" "08" "06") == 0x7FFC_0000_2000             # bregx 7 8; deref
    s = stop("77" "10" "06")
    assert (s.end, s.address) == (U.OUTSIDE_SNAPSHOT, REGS[7] + 16)
    assert ev("06", push=REGS[7]) == 0x1122334455667788            # the pushed CFA


def test_what_it_refuses():
    assert stop("03" + "00" * 8).detail == "DW_OP 0x03"            # DW_OP_addr: a link-time address
    assert stop("50").detail == "DW_OP 0x50"                       # DW_OP_reg0: a location, not a value
    assert stop("9c").detail == "DW_OP 0x9c"                       # DW_OP_call_frame_cfa
    assert stop("22").detail == "stack underflow"
    assert stop("").detail == "empty result"
    assert stop("3130" "1b").detail == "division by zero"
    s = stop("73" "00")                                            # breg3 (rbx): no value
    assert s.end == U.UNKNOWN_REGISTER and s.detail == "r3 in an expression"
    assert stop("10").detail == "truncated LEB128"
    assert stop("0c0102").detail == "truncated constant"
