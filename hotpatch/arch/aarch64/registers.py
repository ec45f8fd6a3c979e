"""AArch64 registers as PTRACE_GETREGSET(NT_PRSTATUS) returns them (struct user_pt_regs)."""

import ctypes

from hotpatch.arch.base import ThreadView

U64 = (1 << 64) - 1
LR = 30   # x30, the link register


class user_pt_regs(ctypes.Structure):
    """arch/arm64/include/uapi/asm/ptrace.h"""
    _fields_ = [("regs", ctypes.c_ulonglong * 31), ("sp", ctypes.c_ulonglong),
                ("pc", ctypes.c_ulonglong), ("pstate", ctypes.c_ulonglong)]


def strip_pac(value: int, va_bits: int = 48) -> int:
    """The address in a code pointer that may carry a pointer authentication code.

    The PAC occupies the bits above the virtual address (va_bits..54 and 56..63:
    Linux enables top-byte-ignore for data only, so instruction pointers use the
    top byte too); bit 55 says which half of the address space the pointer is in
    and is never part of the code. Assumption: a user-space pointer has bit 55
    clear and all bits from va_bits up clear, so stripping clears them (as XPACI
    does); a pointer with bit 55 set gets them set. va_bits = 48 is the Linux
    user default; a process that asked mmap for addresses above 2**48 (52-bit VA)
    needs va_bits = 52, or better the mask from the NT_ARM_PAC_MASK regset.
    """
    low = (1 << va_bits) - 1
    return (value | (U64 & ~low)) if value >> 55 & 1 else value & low


def pc(regs) -> int:
    return regs.pc


def sp(regs) -> int:
    return regs.sp


def thread_view(regs) -> ThreadView:
    """pc, and LR: the return address of a leaf function lives only there, maybe PAC-signed."""
    return (regs.pc, strip_pac(regs.regs[LR])), regs.sp, 1 << 64
