"""Calling a function in a stopped x86-64 thread (System V ABI): arguments in rdi rsi rdx rcx r8 r9,
the return address on the stack, rsp 16-byte aligned at the call, result in rax.

The function returns into a loop in the patch image (`jmp .`), with a journal
of the thread's registers right above its return address, below the red
zone: a tracer that dies during the call leaves the thread parked there (see
process/parking.py). Images of hotpatch 0.1 returned into a trap (int3).
"""

import struct

from hotpatch.arch.x86_64.registers import user_regs_struct

TRAP_INSN = b"\xcc"                 # int3
RETURN_LOOP = b"\xeb\xfe"           # jmp .
RED_ZONE = 128
ARGUMENT_REGISTERS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
U64 = (1 << 64) - 1


def hijack_for_call(regs, function: int, args: list[int], return_to: int) -> tuple[object, int, bytes]:
    """(registers, address, bytes to write there first): the thread enters `function` as if called."""
    sp = ((regs.rsp - RED_ZONE) & ~15) - 8     # as after `call`: rsp + 8 is 16-byte aligned
    return _entering(regs, function, args, sp), sp, struct.pack("<Q", return_to)


def _entering(regs, function: int, args: list[int], sp: int) -> user_regs_struct:
    if len(args) > len(ARGUMENT_REGISTERS):
        raise ValueError("at most 6 register arguments")
    new = user_regs_struct.from_buffer_copy(regs)
    new.rsp = sp
    new.rip = function
    new.rax = 0                                  # no vector registers used by a variadic callee
    new.orig_rax = U64                           # never "restart" a system call it was in
    for name, value in zip(ARGUMENT_REGISTERS, args):
        setattr(new, name, value & U64)
    return new


def hijack_parked_call(regs, function: int, args: list[int], return_to: int,
                       journal_size: int) -> tuple[object, int, bytes]:
    """(registers, address, bytes to write there first: the return address): `function` entered as if
    called, returning into the loop at `return_to` with rsp on `journal_size` free bytes."""
    sp = ((regs.rsp - RED_ZONE - journal_size) & ~15) - 8   # the journal starts at sp + 8, 16-byte aligned
    return _entering(regs, function, args, sp), sp, struct.pack("<Q", return_to)


def returned_at(regs, return_to: int) -> bool:
    """The thread stopped on the trap: int3 has executed, rip is past it."""
    return regs.rip == return_to + len(TRAP_INSN)


def call_result(regs) -> int:
    return regs.rax
