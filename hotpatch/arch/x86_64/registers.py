"""x86-64 registers as PTRACE_GETREGSET(NT_PRSTATUS) returns them (struct user_regs_struct)."""

import ctypes

from hotpatch.arch.base import ThreadView


class user_regs_struct(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
        "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs")]


def pc(regs) -> int:
    return regs.rip


def sp(regs) -> int:
    return regs.rsp


def thread_view(regs) -> ThreadView:
    """Frames of a thread end below its thread pointer when that lies above sp.

    x86-64 TLS is variant II: glibc puts the static TLS and then the TCB
    (struct pthread, at fs_base) at the top of a thread's stack mapping, and
    the stack grows down from below them. Nothing at or above fs_base is a
    frame, and struct pthread's own code pointers (the start routine) are no
    return address. (The main thread's fs_base lies above its stack mapping,
    whose end is then the smaller bound.) Called for every thread while all
    are stopped, so no helper calls.
    """
    sp_, fs_base = regs.rsp, regs.fs_base
    return (regs.rip,), sp_, fs_base if fs_base > sp_ else 1 << 64
