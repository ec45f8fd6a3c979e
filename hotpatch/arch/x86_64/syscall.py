"""The x86-64 system call ABI: `syscall`, number in rax, arguments in rdi rsi rdx r10 r8 r9."""

from hotpatch.arch.x86_64.registers import user_regs_struct

AUDIT_ARCH = 0xC000003E       # AUDIT_ARCH_X86_64
SYSCALL_INSN = b"\x0f\x05"
SYSCALL_INSN_ALIGN = 1
# A system call that returns (`syscall; ret`), and an instruction that loops on itself (`jmp .`, found
# at any byte offset): a thread borrowed for a system call returns into that loop if its tracer dies.
RETURNING_SYSCALL = SYSCALL_INSN + b"\xc3"
PARK_INSN = b"\xeb\xfe"
RED_ZONE = 128
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


def hijack_parked(regs, gadget: int, park: int, nr: int, args: list[int], journal_size: int):
    """(registers, address, bytes to write there): system call `nr` at `gadget` (`syscall; ret`),
    whose `ret` goes to `park`, with `journal_size` bytes for the journal right above the return
    address, below the red zone: after `ret`, rsp points at the journal."""
    new = hijack(regs, gadget, nr, args)
    journal = (regs.rsp - RED_ZONE - journal_size) & ~15
    new.rsp = journal - 8
    return new, new.rsp, park.to_bytes(8, "little")


def parked_journal(regs) -> int:
    """Where the journal of a thread parked by hijack_parked is."""
    return regs.rsp
