"""The x86-64 system call ABI: `syscall`, number in rax, arguments in rdi rsi rdx r10 r8 r9."""

from hotpatch.arch.x86_64.registers import user_regs_struct

AUDIT_ARCH = 0xC000003E       # AUDIT_ARCH_X86_64
SYSCALL_INSN = b"\x0f\x05"
SYSCALL_INSN_ALIGN = 1
SYSCALL_NUMBERS = {"mmap": 9, "mprotect": 10, "munmap": 11, "prctl": 157}
ARGUMENT_REGISTERS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
U64 = (1 << 64) - 1


def hijack(regs, gadget: int, nr: int, args: list[int]):
    new = user_regs_struct.from_buffer_copy(regs)
    new.rip = gadget
    new.rax = nr
    # orig_rax = -1 keeps the kernel from "restarting" an interrupted syscall
    # by rewinding rip over our gadget (-ERESTART* left in rax).
    new.orig_rax = U64
    for name, value in zip(ARGUMENT_REGISTERS, args):
        setattr(new, name, value & U64)
    return new


def result(regs) -> int:
    value = regs.rax
    return value - (1 << 64) if value >= 1 << 63 else value
