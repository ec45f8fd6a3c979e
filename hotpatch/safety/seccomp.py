"""Seccomp filters as the kernel runs them: a classic-BPF interpreter, pure.

A filter is a list of sock_filter tuples (code, jt, jf, k). Programs are
checked the way the kernel checks them when they are installed (only the
opcodes seccomp accepts, jumps forward and in range, a RET at the end,
scratch memory written before it is read), then run against a seccomp_data:

    offset  0  int nr
    offset  4  u32 arch                 (AUDIT_ARCH_*)
    offset  8  u64 instruction_pointer  (the pc after the syscall instruction)
    offset 16  u64 args[6]

read in 32-bit words, little-endian (x86-64 and aarch64 both are). A result
is the filter's 32-bit return value: the action in the high 16 bits, data
(an errno, a tracer message) in the low 16 bits.
"""

import struct
from dataclasses import dataclass

from hotpatch.errors import SeccompFilterError as FilterError

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF

ACTION_NAMES = {
    SECCOMP_RET_KILL_PROCESS: "KILL_PROCESS",
    SECCOMP_RET_KILL_THREAD: "KILL_THREAD",
    SECCOMP_RET_TRAP: "TRAP",
    SECCOMP_RET_ERRNO: "ERRNO",
    SECCOMP_RET_USER_NOTIF: "USER_NOTIF",
    SECCOMP_RET_TRACE: "TRACE",
    SECCOMP_RET_LOG: "LOG",
    SECCOMP_RET_ALLOW: "ALLOW",
}

# linux/filter.h and linux/bpf_common.h
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = range(8)
BPF_W = 0x00
BPF_IMM, BPF_ABS, BPF_MEM, BPF_LEN = 0x00, 0x20, 0x60, 0x80
BPF_K, BPF_X, BPF_A = 0x00, 0x08, 0x10
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV = 0x00, 0x10, 0x20, 0x30
BPF_OR, BPF_AND, BPF_LSH, BPF_RSH, BPF_NEG, BPF_XOR = 0x40, 0x50, 0x60, 0x70, 0x80, 0xA0
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_TAX, BPF_TXA = 0x00, 0x80

BPF_MAXINSNS = 4096
BPF_MEMWORDS = 16
SECCOMP_DATA_SIZE = 64
SOCK_FILTER = struct.Struct("<HBBI")
U32 = 0xFFFFFFFF

ALU_OPS = (BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_AND, BPF_OR, BPF_XOR, BPF_LSH, BPF_RSH)
COND_JUMPS = (BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET)

# Exactly the opcodes seccomp_check_filter() accepts (no MOD, no byte or
# half-word loads, no indirect loads, no RET X).
SECCOMP_OPCODES = frozenset(
    {BPF_LD | BPF_W | BPF_ABS, BPF_LD | BPF_W | BPF_LEN, BPF_LDX | BPF_W | BPF_LEN,
     BPF_LD | BPF_IMM, BPF_LDX | BPF_IMM, BPF_LD | BPF_MEM, BPF_LDX | BPF_MEM, BPF_ST, BPF_STX,
     BPF_RET | BPF_K, BPF_RET | BPF_A, BPF_MISC | BPF_TAX, BPF_MISC | BPF_TXA,
     BPF_ALU | BPF_NEG, BPF_JMP | BPF_JA}
    | {BPF_ALU | op | src for op in ALU_OPS for src in (BPF_K, BPF_X)}
    | {BPF_JMP | op | src for op in COND_JUMPS for src in (BPF_K, BPF_X)})

Instruction = tuple[int, int, int, int]


@dataclass(frozen=True)
class SeccompData:
    """struct seccomp_data: what a filter sees of one system call."""

    nr: int
    arch: int
    instruction_pointer: int = 0
    args: tuple[int, ...] = (0, 0, 0, 0, 0, 0)

    def pack(self) -> bytes:
        if len(self.args) != 6:
            raise ValueError("seccomp_data holds exactly 6 arguments")
        mask = (1 << 64) - 1
        return struct.pack("<iIQ6Q", self.nr, self.arch & U32, self.instruction_pointer & mask,
                           *(a & mask for a in self.args))


def parse_program(raw: bytes) -> list[Instruction]:
    """sock_filter array (8 bytes each: u16 code, u8 jt, u8 jf, u32 k) to tuples."""
    if len(raw) % SOCK_FILTER.size:
        raise FilterError(f"a filter of {len(raw)} bytes is not a whole number of instructions")
    return [SOCK_FILTER.unpack_from(raw, off) for off in range(0, len(raw), SOCK_FILTER.size)]


def check_program(program: list[Instruction]) -> None:
    """Reject what bpf_check_classic() and seccomp_check_filter() would reject."""
    n = len(program)
    if not 1 <= n <= BPF_MAXINSNS:
        raise FilterError(f"a filter has {n} instructions (1 to {BPF_MAXINSNS} allowed)")
    for pc, (code, jt, jf, k) in enumerate(program):
        if code not in SECCOMP_OPCODES:
            raise FilterError(f"instruction {pc}: opcode {code:#06x} is not allowed in a seccomp filter")
        cls = code & 0x07
        if code == BPF_LD | BPF_W | BPF_ABS and (k % 4 or k >= SECCOMP_DATA_SIZE):
            raise FilterError(f"instruction {pc}: load at offset {k} outside seccomp_data")
        if cls in (BPF_ST, BPF_STX) or code in (BPF_LD | BPF_MEM, BPF_LDX | BPF_MEM):
            if k >= BPF_MEMWORDS:
                raise FilterError(f"instruction {pc}: scratch memory M[{k}] does not exist")
        if code == BPF_ALU | BPF_DIV | BPF_K and k == 0:
            raise FilterError(f"instruction {pc}: division by constant zero")
        if code in (BPF_ALU | BPF_LSH | BPF_K, BPF_ALU | BPF_RSH | BPF_K) and k >= 32:
            raise FilterError(f"instruction {pc}: shift by {k}")
        if code == BPF_JMP | BPF_JA:
            if k >= n - pc - 1:
                raise FilterError(f"instruction {pc}: jump past the end")
        elif cls == BPF_JMP:
            if pc + 1 + max(jt, jf) >= n:
                raise FilterError(f"instruction {pc}: jump past the end")
    if program[-1][0] & 0x07 != BPF_RET:
        raise FilterError("a filter does not end with a return")
    _check_memory_reads(program)


def _check_memory_reads(program: list[Instruction]) -> None:
    """Every read of M[k] must follow a write of M[k] on every path leading to it."""
    everything = (1 << BPF_MEMWORDS) - 1
    incoming = [everything] * len(program)   # words written on every path to each pc
    valid = 0                                # at entry, nothing is written
    for pc, (code, jt, jf, k) in enumerate(program):
        valid &= incoming[pc]
        cls = code & 0x07
        if cls in (BPF_ST, BPF_STX):
            valid |= 1 << k
        elif code in (BPF_LD | BPF_MEM, BPF_LDX | BPF_MEM):
            if not valid >> k & 1:
                raise FilterError(f"instruction {pc}: reads M[{k}] before any write")
        elif code == BPF_JMP | BPF_JA:
            incoming[pc + 1 + k] &= valid
            valid = everything
        elif cls == BPF_JMP:
            incoming[pc + 1 + jt] &= valid
            incoming[pc + 1 + jf] &= valid
            valid = everything
        elif cls == BPF_RET:
            valid = everything


def run(program: list[Instruction], data: SeccompData | bytes) -> int:
    """The 32-bit value one filter returns for `data`."""
    check_program(program)
    raw = data.pack() if isinstance(data, SeccompData) else bytes(data)
    if len(raw) != SECCOMP_DATA_SIZE:
        raise ValueError(f"seccomp_data is {SECCOMP_DATA_SIZE} bytes, not {len(raw)}")
    a = x = 0
    mem = [0] * BPF_MEMWORDS
    pc = 0
    while pc < len(program):   # jumps only go forward: this ends
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if cls == BPF_RET:
            return (a if code & 0x18 == BPF_A else k) & U32
        if cls == BPF_LD:
            mode = code & 0xE0
            if mode == BPF_ABS:
                (a,) = struct.unpack_from("<I", raw, k)
            elif mode == BPF_LEN:
                a = SECCOMP_DATA_SIZE
            elif mode == BPF_MEM:
                a = mem[k]
            else:
                a = k
        elif cls == BPF_LDX:
            mode = code & 0xE0
            x = SECCOMP_DATA_SIZE if mode == BPF_LEN else mem[k] if mode == BPF_MEM else k
        elif cls == BPF_ST:
            mem[k] = a
        elif cls == BPF_STX:
            mem[k] = x
        elif cls == BPF_ALU:
            op = code & 0xF0
            if op == BPF_NEG:
                a = -a & U32
                continue
            operand = x if code & BPF_X else k
            if op == BPF_DIV and operand == 0:
                return 0   # classic BPF: division by a zero X ends the program returning 0
            a = _alu(op, a, operand)
        elif cls == BPF_JMP:
            op = code & 0xF0
            if op == BPF_JA:
                pc += k
                continue
            operand = x if code & BPF_X else k
            taken = (a == operand if op == BPF_JEQ else a > operand if op == BPF_JGT
                     else a >= operand if op == BPF_JGE else bool(a & operand))
            pc += jt if taken else jf
        else:   # BPF_MISC
            if code & 0xF8 == BPF_TXA:
                a = x
            else:
                x = a
    raise FilterError("a filter ran past its end")   # unreachable after check_program


def _alu(op: int, a: int, v: int) -> int:
    if op == BPF_ADD:
        r = a + v
    elif op == BPF_SUB:
        r = a - v
    elif op == BPF_MUL:
        r = a * v
    elif op == BPF_DIV:
        r = a // v
    elif op == BPF_AND:
        r = a & v
    elif op == BPF_OR:
        r = a | v
    elif op == BPF_XOR:
        r = a ^ v
    elif op == BPF_LSH:
        r = a << (v & 31)   # 32-bit shifts use the count modulo 32 (interpreter and JITs)
    else:
        r = a >> (v & 31)
    return r & U32


def _precedence(ret: int) -> int:
    """The kernel's ACTION_ONLY(): the action as a signed 32-bit value; lower wins."""
    action = ret & SECCOMP_RET_ACTION_FULL
    return action - (1 << 32) if action & 0x80000000 else action


def evaluate(filters: list[list[Instruction]], data: SeccompData | bytes) -> int:
    """The value that decides a syscall under stacked filters.

    `filters` is in PTRACE_SECCOMP_GET_FILTER order (index 0 = installed
    first). Every filter runs; the most restrictive action wins, and among
    equal actions the newest filter's value (its errno, say) is kept, as in
    seccomp_run_filters(). No filter at all means ALLOW.
    """
    best = SECCOMP_RET_ALLOW
    best_rank = None
    for program in reversed(filters):
        ret = run(program, data)
        rank = _precedence(ret)
        if best_rank is None or rank < best_rank:
            best, best_rank = ret, rank
    return best


def allowed(action: int) -> bool:
    """True when the syscall runs as if there were no filter (ALLOW, LOG)."""
    return action & SECCOMP_RET_ACTION_FULL in (SECCOMP_RET_ALLOW, SECCOMP_RET_LOG)


def describe(action: int) -> str:
    """KILL_PROCESS, ERRNO(1), TRACE(7), ...; an unknown action kills, as in the kernel."""
    full = action & SECCOMP_RET_ACTION_FULL
    name = ACTION_NAMES.get(full)
    if name is None:
        return f"unknown {action:#010x}, which kills"
    data = action & SECCOMP_RET_DATA
    if full == SECCOMP_RET_ERRNO or (full in (SECCOMP_RET_TRAP, SECCOMP_RET_TRACE) and data):
        return f"{name}({data})"
    return name


def first_forbidden(filters: list[list[Instruction]], audit_arch: int, instruction_pointer: int,
                    calls: list[tuple[str, int, list[int]]]) -> tuple[str, int] | None:
    """The first planned call (name, nr, args) the filters do not allow, with the deciding value.

    Arguments not given are taken as 0; the syscall is made from
    `instruction_pointer` (the pc after the syscall instruction).
    """
    for name, nr, args in calls:
        if len(args) > 6:
            raise ValueError(f"{name}: a system call has at most 6 arguments")
        data = SeccompData(nr, audit_arch, instruction_pointer, tuple(args) + (0,) * (6 - len(args)))
        action = evaluate(filters, data)
        if not allowed(action):
            return name, action
    return None
