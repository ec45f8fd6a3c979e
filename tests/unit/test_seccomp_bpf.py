"""The classic-BPF interpreter that judges seccomp filters as the kernel runs them, on hand-built
programs: every instruction class, malformed programs, stacked filters, realistic filters.
(The policy built on it is tested in test_sandbox.py; filters read back from live processes,
and the kernel's own verdicts, in tests/live/test_seccomp_*.py.)"""

import errno
import itertools
import struct

import pytest

from hotpatch.safety import seccomp as S
from hotpatch.safety.seccomp import (
    BPF_A,
    BPF_ABS,
    BPF_ADD,
    BPF_ALU,
    BPF_AND,
    BPF_DIV,
    BPF_IMM,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JMP,
    BPF_JSET,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_LSH,
    BPF_MEM,
    BPF_MISC,
    BPF_MUL,
    BPF_NEG,
    BPF_OR,
    BPF_RET,
    BPF_RSH,
    BPF_ST,
    BPF_STX,
    BPF_SUB,
    BPF_TAX,
    BPF_TXA,
    BPF_W,
    BPF_X,
    BPF_XOR,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_KILL_THREAD,
    SECCOMP_RET_LOG,
    SECCOMP_RET_TRACE,
    SECCOMP_RET_TRAP,
    SECCOMP_RET_USER_NOTIF,
    FilterError,
    SeccompData,
    allowed,
    evaluate,
    run,
)

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
NR_MMAP, NR_MPROTECT, NR_MUNMAP, NR_PRCTL = 9, 10, 11, 157   # x86-64


def stmt(code, k=0):
    return (code, 0, 0, k)


def jump(code, k, jt=0, jf=0):
    return (code, jt, jf, k)


def ld(offset):
    return stmt(BPF_LD | BPF_W | BPF_ABS, offset)


RET_A = stmt(BPF_RET | BPF_A)
ALLOW = stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
DATA = SeccompData(nr=NR_MMAP, arch=AUDIT_ARCH_X86_64, instruction_pointer=0x7FFF_1234_5678_9ABC,
                   args=(0x1111_2222_3333_4444, 5, 0xFFFF_FFFF_FFFF_FFFF, 7, 8, 0xAABB_CCDD_0000_0001))


def value(*program, data=DATA):
    return run(list(program), data)


# -- seccomp_data and the instruction format ----------------------------------------------------

def test_seccomp_data_layout_is_the_kernels():
    raw = DATA.pack()
    assert len(raw) == 64
    assert struct.unpack_from("<iI", raw, 0) == (NR_MMAP, AUDIT_ARCH_X86_64)
    assert struct.unpack_from("<Q", raw, 8) == (0x7FFF_1234_5678_9ABC,)
    assert struct.unpack_from("<6Q", raw, 16) == DATA.args
    assert SeccompData(-1, 0, 0, (-1, 0, 0, 0, 0, 0)).pack()[:4] == b"\xff" * 4
    with pytest.raises(ValueError):
        SeccompData(1, 2, 3, (1, 2)).pack()


def test_parse_program_reads_sock_filter_records():
    program = [ld(0), jump(BPF_JMP | BPF_JEQ | BPF_K, 9, 1, 2), (BPF_RET | BPF_K, 0, 0, 0x7FFF0000)]
    raw = b"".join(struct.pack("<HBBI", *insn) for insn in program)
    assert raw[:8] == bytes.fromhex("2000 00 00 00000000".replace(" ", ""))
    assert S.parse_program(raw) == program
    with pytest.raises(FilterError):
        S.parse_program(raw[:-1])


# -- every instruction class ---------------------------------------------------------------------

def test_loads_of_every_seccomp_data_word():
    assert value(ld(0), RET_A) == NR_MMAP
    assert value(ld(4), RET_A) == AUDIT_ARCH_X86_64
    assert value(ld(8), RET_A) == 0x5678_9ABC          # instruction_pointer, low word first
    assert value(ld(12), RET_A) == 0x7FFF_1234
    assert value(ld(16), RET_A) == 0x3333_4444         # args[0] low, high
    assert value(ld(20), RET_A) == 0x1111_2222
    assert value(ld(32), RET_A) == 0xFFFF_FFFF
    assert value(ld(56), RET_A) == 0x0000_0001         # args[5]
    assert value(ld(60), RET_A) == 0xAABB_CCDD
    assert value(stmt(BPF_LD | BPF_W | BPF_LEN), RET_A) == 64
    assert value(stmt(BPF_LDX | BPF_W | BPF_LEN), stmt(BPF_MISC | BPF_TXA), RET_A) == 64


def test_immediates_and_register_moves():
    assert value(stmt(BPF_LD | BPF_IMM, 0xDEADBEEF), RET_A) == 0xDEADBEEF
    assert value(stmt(BPF_LDX | BPF_IMM, 42), stmt(BPF_MISC | BPF_TXA), RET_A) == 42
    assert value(stmt(BPF_LD | BPF_IMM, 7), stmt(BPF_MISC | BPF_TAX), stmt(BPF_LD | BPF_IMM, 0),
                 stmt(BPF_MISC | BPF_TXA), RET_A) == 7


def test_scratch_memory():
    assert value(stmt(BPF_LD | BPF_IMM, 11), stmt(BPF_ST, 15), stmt(BPF_LD | BPF_IMM, 0),
                 stmt(BPF_LD | BPF_MEM, 15), RET_A) == 11
    assert value(stmt(BPF_LDX | BPF_IMM, 12), stmt(BPF_STX, 0), stmt(BPF_LDX | BPF_IMM, 0),
                 stmt(BPF_LDX | BPF_MEM, 0), stmt(BPF_MISC | BPF_TXA), RET_A) == 12


ALU_CASES = [   # op, A, operand, result (32-bit, unsigned)
    (BPF_ADD, 0xFFFF_FFFF, 2, 1), (BPF_SUB, 1, 2, 0xFFFF_FFFF), (BPF_MUL, 0x1_0001, 0x1_0001, 0x2_0001),
    (BPF_DIV, 100, 7, 14), (BPF_DIV, 0xFFFF_FFFF, 2, 0x7FFF_FFFF), (BPF_AND, 0xF0F0, 0xFF00, 0xF000),
    (BPF_OR, 0xF0F0, 0x0F00, 0xFFF0), (BPF_XOR, 0xFF, 0x0F, 0xF0), (BPF_LSH, 0x8000_0001, 1, 2),
    (BPF_RSH, 0x8000_0000, 31, 1),
]


@pytest.mark.parametrize("op,a,operand,expected", ALU_CASES)
def test_alu_with_k_and_x(op, a, operand, expected):
    assert value(stmt(BPF_LD | BPF_IMM, a), stmt(BPF_ALU | op | BPF_K, operand), RET_A) == expected
    assert value(stmt(BPF_LD | BPF_IMM, a), stmt(BPF_LDX | BPF_IMM, operand),
                 stmt(BPF_ALU | op | BPF_X), RET_A) == expected


def test_alu_neg_division_by_zero_x_and_wide_shift_x():
    assert value(stmt(BPF_LD | BPF_IMM, 1), stmt(BPF_ALU | BPF_NEG), RET_A) == 0xFFFF_FFFF
    assert value(stmt(BPF_LD | BPF_IMM, 0), stmt(BPF_ALU | BPF_NEG), RET_A) == 0
    # classic BPF: dividing by X == 0 ends the program, returning 0 (= KILL_THREAD)
    assert value(stmt(BPF_LD | BPF_IMM, 5), stmt(BPF_LDX | BPF_IMM, 0), stmt(BPF_ALU | BPF_DIV | BPF_X),
                 ALLOW) == 0
    assert value(stmt(BPF_LD | BPF_IMM, 3), stmt(BPF_LDX | BPF_IMM, 33), stmt(BPF_ALU | BPF_LSH | BPF_X),
                 RET_A) == 6


JUMP_CASES = [   # op, A, operand, taken
    (BPF_JEQ, 5, 5, True), (BPF_JEQ, 5, 6, False), (BPF_JGT, 0xFFFF_FFFF, 1, True),
    (BPF_JGT, 5, 5, False), (BPF_JGE, 5, 5, True), (BPF_JGE, 4, 5, False),
    (BPF_JSET, 0b1010, 0b0010, True), (BPF_JSET, 0b1010, 0b0101, False),
]


@pytest.mark.parametrize("op,a,operand,taken", JUMP_CASES)
def test_conditional_jumps_with_k_and_x(op, a, operand, taken):
    tail = [stmt(BPF_RET | BPF_K, 1), stmt(BPF_RET | BPF_K, 2), stmt(BPF_RET | BPF_K, 3)]
    expected = 3 if taken else 2
    assert run([stmt(BPF_LD | BPF_IMM, a), jump(BPF_JMP | op | BPF_K, operand, 2, 1), *tail], DATA) == expected
    assert run([stmt(BPF_LD | BPF_IMM, a), stmt(BPF_LDX | BPF_IMM, operand), jump(BPF_JMP | op | BPF_X, 0, 2, 1),
                *tail], DATA) == expected


def test_ja_and_returns():
    assert value(jump(BPF_JMP | BPF_JA, 1), stmt(BPF_RET | BPF_K, 1), stmt(BPF_RET | BPF_K, 2)) == 2
    assert value(jump(BPF_JMP | BPF_JA, 0), stmt(BPF_RET | BPF_K, 1)) == 1
    assert value(stmt(BPF_RET | BPF_K, 0xFFFF_FFFF)) == 0xFFFF_FFFF


def test_accepts_raw_seccomp_data_bytes():
    assert run([ld(4), RET_A], DATA.pack()) == AUDIT_ARCH_X86_64
    with pytest.raises(ValueError):
        run([ld(4), RET_A], b"\0" * 63)


# -- malformed programs forbid ------------------------------------------------------------------

MALFORMED = {
    "empty": [],
    "too long": [stmt(BPF_LD | BPF_IMM)] * 4096 + [ALLOW],
    "no return at the end": [stmt(BPF_LD | BPF_IMM, 1)],
    "mod (not in seccomp)": [stmt(BPF_ALU | 0x90 | BPF_K, 3), ALLOW],
    "half-word load": [stmt(BPF_LD | 0x08 | BPF_ABS, 0), ALLOW],
    "indirect load": [stmt(BPF_LD | BPF_W | 0x40, 0), ALLOW],
    "ret x": [stmt(BPF_RET | BPF_X)],
    "unknown opcode": [stmt(0xFFFF), ALLOW],
    "load misaligned": [ld(2), ALLOW],
    "load past seccomp_data": [ld(64), ALLOW],
    "ja past the end": [jump(BPF_JMP | BPF_JA, 1), ALLOW],
    "jt past the end": [jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0), ALLOW],
    "jf past the end": [jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 5), ALLOW],
    "jump to the end": [ld(0), jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1)],
    "scratch M[16]": [stmt(BPF_ST, 16), ALLOW],
    "division by constant zero": [stmt(BPF_ALU | BPF_DIV | BPF_K, 0), ALLOW],
    "shift by constant 32": [stmt(BPF_ALU | BPF_LSH | BPF_K, 32), ALLOW],
    "read of unwritten memory": [stmt(BPF_LD | BPF_MEM, 3), ALLOW],
    "memory written on one path only": [ld(0), jump(BPF_JMP | BPF_JEQ | BPF_K, 9, 0, 1), stmt(BPF_ST, 2),
                                        stmt(BPF_LDX | BPF_MEM, 2), ALLOW],
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_programs_are_refused(name):
    with pytest.raises(FilterError):
        run(MALFORMED[name], DATA)
    with pytest.raises(FilterError):   # a bad filter after an allowing one still decides
        evaluate([[ALLOW], MALFORMED[name]], DATA)


def test_memory_written_on_every_path_is_fine():
    program = [ld(0), jump(BPF_JMP | BPF_JEQ | BPF_K, NR_MMAP, 0, 2), stmt(BPF_ST, 2), jump(BPF_JMP | BPF_JA, 1),
               stmt(BPF_ST, 2), stmt(BPF_LD | BPF_MEM, 2), RET_A]
    assert run(program, DATA) == NR_MMAP


# -- stacked filters ----------------------------------------------------------------------------

PRECEDENCE = [SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_KILL_THREAD, SECCOMP_RET_TRAP, SECCOMP_RET_ERRNO,
              SECCOMP_RET_USER_NOTIF, SECCOMP_RET_TRACE, SECCOMP_RET_LOG, SECCOMP_RET_ALLOW]


def returning(ret):
    return [stmt(BPF_RET | BPF_K, ret)]


@pytest.mark.parametrize("first,second", itertools.permutations(range(len(PRECEDENCE)), 2))
def test_most_restrictive_action_wins_in_any_order(first, second):
    a, b = PRECEDENCE[first] | 7, PRECEDENCE[second] | 9
    winner = a if first < second else b
    assert evaluate([returning(a), returning(b)], DATA) == winner
    assert evaluate([returning(ALLOW[3]), returning(a), returning(b)], DATA) == winner


def test_equal_actions_keep_the_newest_filters_data():
    errno_old, errno_new = SECCOMP_RET_ERRNO | errno.EPERM, SECCOMP_RET_ERRNO | errno.EACCES
    assert evaluate([returning(errno_old), returning(errno_new)], DATA) == errno_new


def test_no_filter_allows_and_every_filter_runs():
    assert evaluate([], DATA) == SECCOMP_RET_ALLOW
    with pytest.raises(FilterError):   # a bad filter after an allowing one still decides
        evaluate([[ALLOW], [ALLOW], [stmt(BPF_LD | BPF_MEM, 0), ALLOW]], DATA)


def test_unknown_actions_rank_by_signed_value_and_forbid():
    unknown = 0x0001_0000
    assert evaluate([returning(unknown), returning(SECCOMP_RET_TRAP)], DATA) == unknown
    assert evaluate([returning(unknown), returning(SECCOMP_RET_KILL_THREAD)], DATA) == SECCOMP_RET_KILL_THREAD
    assert not allowed(unknown)
    assert "kills" in S.describe(unknown)


def test_allowed_only_for_allow_and_log():
    assert allowed(SECCOMP_RET_ALLOW) and allowed(SECCOMP_RET_LOG) and allowed(SECCOMP_RET_ALLOW | 0x1234)
    assert not any(allowed(a | d) for a in PRECEDENCE[:6] for d in (0, 1, 0xFFFF))
    assert S.describe(SECCOMP_RET_ERRNO | 1) == "ERRNO(1)"
    assert S.describe(SECCOMP_RET_KILL_PROCESS) == "KILL_PROCESS"
    assert S.describe(SECCOMP_RET_ALLOW) == "ALLOW"


# -- realistic filters against hotpatch's calls --------------------------------------------------

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
GADGET = 0x7FFF_F7FC_1000


def mdwe_filter():
    """Like systemd's MemoryDenyWriteExecute=: no mmap W+X, no mprotect adding X (EPERM)."""
    eperm = stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | errno.EPERM)
    return [
        ld(4), jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        ld(0), jump(BPF_JMP | BPF_JEQ | BPF_K, NR_MMAP, 0, 3),
        ld(32), stmt(BPF_ALU | BPF_AND | BPF_K, PROT_WRITE | PROT_EXEC),       # args[2] = prot
        jump(BPF_JMP | BPF_JEQ | BPF_K, PROT_WRITE | PROT_EXEC, 3, 4),
        jump(BPF_JMP | BPF_JEQ | BPF_K, NR_MPROTECT, 0, 3),
        ld(32), jump(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 1),
        eperm, ALLOW,
    ]


def calls(*prots):
    out = [("mmap", NR_MMAP, [0x5555_0000_0000, 0x3000, PROT_READ | PROT_EXEC, 0x100022, (1 << 64) - 1, 0])]
    out += [("mprotect", NR_MPROTECT, [0x5555_0000_1000, 0x1000, p]) for p in prots]
    return out + [("prctl", NR_PRCTL, [0x53564D41, 0, 0x5555_0000_0000, 0x3000, 0x5555_0000_0010]),
                  ("munmap", NR_MUNMAP, [0x5555_0000_0000, 0x3000])]


def test_argument_checks_decide():
    flt = [mdwe_filter()]
    ip = GADGET + 2
    assert S.first_forbidden(flt, AUDIT_ARCH_X86_64, ip, calls(PROT_READ, PROT_READ | PROT_WRITE)) is None
    assert S.first_forbidden(flt, AUDIT_ARCH_X86_64, ip, calls(PROT_READ | PROT_EXEC)) == \
        ("mprotect", SECCOMP_RET_ERRNO | errno.EPERM)
    rwx = [("mmap", NR_MMAP, [0, 0x1000, PROT_READ | PROT_WRITE | PROT_EXEC, 0x22, (1 << 64) - 1, 0])]
    assert S.first_forbidden(flt, AUDIT_ARCH_X86_64, ip, rwx) == ("mmap", SECCOMP_RET_ERRNO | errno.EPERM)
    assert S.first_forbidden(flt, AUDIT_ARCH_AARCH64, ip, calls()) == ("mmap", SECCOMP_RET_KILL_PROCESS)
    with pytest.raises(ValueError):
        S.first_forbidden(flt, AUDIT_ARCH_X86_64, ip, [("mmap", NR_MMAP, [0] * 7)])
