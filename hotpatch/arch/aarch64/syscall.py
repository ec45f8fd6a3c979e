"""The AArch64 system call ABI: `svc #0`, number in x8, arguments in x0..x5, result in x0."""

from hotpatch.arch.aarch64.insn import SVC_0, word
from hotpatch.arch.aarch64.registers import U64, user_pt_regs

AUDIT_ARCH = 0xC00000B7       # AUDIT_ARCH_AARCH64
SYSCALL_INSN = word(SVC_0)
SYSCALL_INSN_ALIGN = 4
SYSCALL_NUMBERS = {"mmap": 222, "mprotect": 226, "munmap": 215, "prctl": 167}
NR_REGISTER = 8


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
