"""The AArch64 system call ABI: `svc #0`, number in x8, arguments in x0..x5, result in x0."""

from hotpatch.arch.aarch64.insn import RET, SVC_0, word
from hotpatch.arch.aarch64.registers import LR, U64, user_pt_regs

AUDIT_ARCH = 0xC00000B7       # AUDIT_ARCH_AARCH64
SYSCALL_INSN = word(SVC_0)
SYSCALL_INSN_ALIGN = 4
SYSCALL_NUMBERS = {"mmap": 222, "mprotect": 226, "munmap": 215, "prctl": 167}
NR_REGISTER = 8
# A system call that returns (`svc #0; ret`). Its `ret` with x30 pointing at itself loops in place:
# a thread borrowed for a system call returns into that loop if its tracer dies.
RETURNING_SYSCALL = word(SVC_0) + word(RET)
PARK_INSN = None   # no separate loop instruction is needed
STACK_MARGIN = 128


def hijack(regs, gadget: int, nr: int, args: list[int]):
    # Before a ptrace stop the kernel already rewound pc to the svc and
    # restored x0 of an interrupted syscall, so moving pc needs no
    # orig_rax-style fix-up (RESEARCH §2).
    new = user_pt_regs.from_buffer_copy(regs)
    new.pc = gadget
    new.regs[NR_REGISTER] = nr
    for i, value in enumerate(args[:6]):
        new.regs[i] = value & U64
    return new


def result(regs) -> int:
    value = regs.regs[0]
    return value - (1 << 64) if value >= 1 << 63 else value


def hijack_parked(regs, gadget: int, park: int, nr: int, args: list[int], journal_size: int):
    """(registers, address, bytes to write there): system call `nr` at `gadget` (`svc #0; ret`)
    returning to `park` (its own `ret`), sp on a journal of `journal_size` bytes below a margin."""
    new = hijack(regs, gadget, nr, args)
    new.regs[LR] = park
    new.sp = (regs.sp - STACK_MARGIN - journal_size) & ~15
    return new, new.sp, b""


def parked_journal(regs) -> int:
    return regs.sp
