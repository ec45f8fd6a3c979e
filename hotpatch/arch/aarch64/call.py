"""Calling a function in a stopped AArch64 thread (AAPCS64): arguments in x0..x7, the return address
in x30, sp 16-byte aligned, result in x0.

The function returns into a loop in the patch image (`b .`), sp on a journal
of the thread's registers: a tracer that dies during the call leaves the
thread parked there (see process/parking.py). Images of hotpatch 0.1
returned into a trap (brk #0). AAPCS64 has no red zone, but a margin below
sp is left anyway for what the interrupted code may have stored there.
"""

from hotpatch.arch.aarch64.insn import BRK_0, B, word
from hotpatch.arch.aarch64.registers import LR, U64, user_pt_regs

TRAP_INSN = word(BRK_0)
RETURN_LOOP = word(B)     # b . (offset 0)
STACK_MARGIN = 128
ARGUMENT_COUNT = 8


def hijack_for_call(regs, function: int, args: list[int], return_to: int) -> tuple[object, int, bytes]:
    """(registers, address, bytes to write there first: none here): the thread enters `function`."""
    new = _entering(regs, function, args, return_to, (regs.sp - STACK_MARGIN) & ~15)
    return new, new.sp, b""


def _entering(regs, function: int, args: list[int], return_to: int, sp: int) -> user_pt_regs:
    if len(args) > ARGUMENT_COUNT:
        raise ValueError("at most 8 register arguments")
    new = user_pt_regs.from_buffer_copy(regs)
    new.sp = sp
    new.pc = function
    new.regs[LR] = return_to
    for i, value in enumerate(args):
        new.regs[i] = value & U64
    return new


def hijack_parked_call(regs, function: int, args: list[int], return_to: int,
                       journal_size: int) -> tuple[object, int, bytes]:
    """(registers, address, bytes to write there first: none): `function` entered returning into the
    loop at `return_to`, sp on `journal_size` free bytes."""
    new = _entering(regs, function, args, return_to, (regs.sp - STACK_MARGIN - journal_size) & ~15)
    return new, new.sp, b""


def returned_at(regs, return_to: int) -> bool:
    """The thread stopped on the trap: brk leaves pc on itself."""
    return regs.pc == return_to


def call_result(regs) -> int:
    return regs.regs[0]
