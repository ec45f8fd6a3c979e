"""x86-64 unwinding: DWARF register numbers, a stopped thread's registers in that order, signal frames.

Registers are a list indexed by DWARF number (System V AMD64 ABI, "DWARF
Register Number Mapping"): 0-15 the general registers, 16 the return address
column, which also holds the frame's pc.
"""

from typing import Callable

RAX, RDX, RCX, RBX, RSI, RDI, RBP, RSP = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)
RA = 16                    # return address column: rip
SP, PC = RSP, RA           # where the walk keeps the stack pointer and the pc
REGISTERS = 17

# glibc's __restore_rt (sysdeps/unix/sysv/linux/x86_64/libc_sigaction.c), the only way back from an x86-64
# handler (SA_RESTORER is mandatory): mov $15 (__NR_rt_sigreturn), %rax; syscall.
SIGRETURN = bytes.fromhex("48c7c00f000000" "0f05")
SIGRETURN_ALIGN = 1

# The kernel's struct rt_sigframe {char *pretcode; struct ucontext uc; struct siginfo info;}
# (arch/x86/include/asm/sigframe.h). The handler's `ret` pops pretcode, so in the trampoline sp points at
# uc; uc_mcontext (struct sigcontext, arch/x86/include/uapi/asm/sigcontext.h) follows uc_flags, uc_link and
# the 24-byte uc_stack, and starts with r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip.
UC_MCONTEXT = 40
SIGCONTEXT_ORDER = (R8, R9, R10, R11, R12, R13, R14, R15, RDI, RSI, RBP, RBX, RDX, RAX, RCX, RSP, RA)


def registers(regs) -> list[int | None]:
    """user_regs_struct -> registers by DWARF number."""
    return [regs.rax, regs.rdx, regs.rcx, regs.rbx, regs.rsi, regs.rdi, regs.rbp, regs.rsp,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15, regs.rip]


def code_address(value: int) -> int:
    """A return address as found in a register or a stack slot, as a pc (unchanged on x86-64)."""
    return value


def sigframe_registers(sp: int, read_word: Callable[[int], int | None]) -> list[int | None] | None:
    """The registers a signal interrupted, read from the frame at `sp` in the trampoline; None if unreadable.

    Their pc is exact: the interrupted instruction, not a return address.
    """
    out: list[int | None] = [None] * REGISTERS
    base = sp + UC_MCONTEXT
    for i, reg in enumerate(SIGCONTEXT_ORDER):
        value = read_word(base + 8 * i)
        if value is None:
            return None
        out[reg] = value
    return out
