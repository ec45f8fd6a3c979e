"""AArch64 unwinding: DWARF register numbers, a stopped thread's registers in that order, signal frames.

Registers are a list indexed by DWARF number ("DWARF for the Arm 64-bit
Architecture"): 0-30 x0-x30, 31 sp; the walk keeps the frame's pc in slot 32.
The return address column is x30 (LR); a leaf function never saves it, and
its CFI gives x30 no rule: the return address is still in the register.
"""

import struct
from typing import Callable

from hotpatch.arch.aarch64.registers import strip_pac

X29, X30 = 29, 30          # frame pointer, link register
RA = X30                   # return address column
SP, PC = 31, 32            # where the walk keeps the stack pointer and the pc
REGISTERS = 33

# The vdso's __kernel_rt_sigreturn (arch/arm64/kernel/vdso/sigreturn.S), where the kernel makes handlers
# return (and glibc's own restorer, where one exists): mov x8, #139 (__NR_rt_sigreturn); svc #0.
SIGRETURN = struct.pack("<II", 0xD2801168, 0xD4000001)
SIGRETURN_ALIGN = 4

# The kernel's struct rt_sigframe {struct siginfo info; struct ucontext uc;} (arch/arm64/kernel/signal.c),
# at sp when the handler is entered and again in the trampoline. siginfo is 128 bytes; uc_mcontext
# (arch/arm64/include/uapi/asm/ucontext.h) follows uc_flags, uc_link, uc_stack and the 128-byte sigset
# area, 16-byte aligned: at 176. struct sigcontext (uapi/asm/sigcontext.h): fault_address, regs[31], sp,
# pc, pstate. The frame record the kernel also pushes holds x29 and x30, not the pc: the vdso's CFI
# (x29-based) would skip the interrupted frame, so this reads the sigcontext.
SIGINFO_SIZE = 128
UC_MCONTEXT = 176
SC_REGS = SIGINFO_SIZE + UC_MCONTEXT + 8
SC_SP = SC_REGS + 31 * 8
SC_PC = SC_SP + 8


def registers(regs) -> list[int | None]:
    """user_pt_regs -> registers by DWARF number, the pc in slot 32."""
    out: list[int | None] = list(regs.regs)
    out.append(regs.sp)
    out.append(regs.pc)
    return out


def code_address(value: int) -> int:
    """A return address as found in LR or a stack slot, as a pc: without its pointer authentication code."""
    return strip_pac(value)


def sigframe_registers(sp: int, read_word: Callable[[int], int | None]) -> list[int | None] | None:
    """The registers a signal interrupted, read from the frame at `sp` in the trampoline; None if unreadable.

    Their pc is exact: the interrupted instruction, not a return address.
    """
    out: list[int | None] = []
    for i in range(33):   # regs[0..30], sp, pc: consecutive in struct sigcontext
        value = read_word(sp + SC_REGS + 8 * i)
        if value is None:
            return None
        out.append(value)
    return out
