"""Calling a function in a stopped AArch64 thread (AAPCS64): arguments in x0..x7, the return address
in x30, sp 16-byte aligned, result in x0.

The return address is a trap (brk #0) in the patch image, so the thread stops
when the function returns. AAPCS64 has no red zone, but a margin below sp is
left anyway for what the interrupted code may have stored there.
"""

from hotpatch.arch.aarch64.insn import BRK_0, word
from hotpatch.arch.aarch64.registers import LR, U64, user_pt_regs

TRAP_INSN = word(BRK_0)
STACK_MARGIN = 128
ARGUMENT_COUNT = 8


def hijack_for_call(regs, function: int, args: list[int], return_to: int) -> tuple[object, int, bytes]:
    """(registers, address, bytes to write there first: none here): the thread enters `function`."""
    if len(args) > ARGUMENT_COUNT:
        raise ValueError("at most 8 register arguments")
    new = user_pt_regs.from_buffer_copy(regs)
    new.sp = (regs.sp - STACK_MARGIN) & ~15
    new.pc = function
    new.regs[LR] = return_to
    for i, value in enumerate(args):
        new.regs[i] = value & U64
    return new, new.sp, b""


def returned_at(regs, return_to: int) -> bool:
    """The thread stopped on the trap: brk leaves pc on itself."""
    return regs.pc == return_to


def call_result(regs) -> int:
    return regs.regs[0]
