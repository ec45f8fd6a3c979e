"""Execution breakpoints owned by a file descriptor (perf_event_open), not by the traced thread.

A ptrace hardware breakpoint (x86-64 debug registers, AArch64 NT_ARM_HW_BREAK)
belongs to the thread and outlives its tracer: a hotpatch killed while one is
armed leaves it to fire with nobody to catch the SIGTRAP, which kills the
target. A perf breakpoint belongs to the fd that created it, and the kernel
closes a dying process's files before it releases its tracees (exit_files()
precedes exit_notify() in do_exit()), so it never outlives hotpatch.

With `sigtrap` the thread receives SIGTRAP with si_code TRAP_PERF and the
attribute's sig_data; under ptrace that is a signal-delivery-stop, which the
tracer recognises by both, never by the program counter (AArch64 steps over a
perf breakpoint, so pc need not be on the address). sigtrap needs Linux 5.13;
older kernels, and perf_event_paranoid refusing an unprivileged caller, make
open() return None: the caller falls back to the thread's debug registers.

AArch64 steps a thread over a perf breakpoint it hit: the kernel disables the
thread's breakpoints and arms a single step, and re-enables them only from that
step's exception. A tracer's PTRACE_CONT or PTRACE_DETACH cancels the step, and
the thread's hardware breakpoints (ours, a debugger's) would stay off for good:
such a thread is resumed with PTRACE_SINGLESTEP until it has moved (STEPS_OVER).
"""

import ctypes
import os
import platform
import struct

PERF_TYPE_BREAKPOINT = 5
HW_BREAKPOINT_X = 4
TRAP_PERF = 6                       # si_code of a perf sigtrap (asm-generic/siginfo.h)
PERF_FLAG_FD_CLOEXEC = 1 << 3
# perf_event_attr flag bits (include/uapi/linux/perf_event.h, in declaration order)
EXCLUDE_KERNEL, EXCLUDE_HV, REMOVE_ON_EXEC, SIGTRAP = 1 << 5, 1 << 6, 1 << 36, 1 << 37
ATTR_SIZE = 128                     # PERF_ATTR_SIZE_VER7: the first with sig_data
SIG_DATA_OFFSET = 120
SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
STEPS_OVER = platform.machine() == "aarch64"

# siginfo_t of SIGTRAP: signo, errno, code, pad; then _sigfault: addr, and its _perf: data, type
SIGINFO = struct.Struct("<iii4xQQI")

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def attr(address: int, cookie: int) -> bytes:
    """perf_event_attr of a user-space execution breakpoint at `address` that signals `cookie`."""
    header = struct.pack("<IIQQQQQIIQQ",
                         PERF_TYPE_BREAKPOINT, ATTR_SIZE,
                         0,                  # config
                         1,                  # sample_period: every hit
                         0, 0,               # sample_type, read_format
                         EXCLUDE_KERNEL | EXCLUDE_HV | REMOVE_ON_EXEC | SIGTRAP,
                         0, HW_BREAKPOINT_X,  # wakeup_events, bp_type
                         address, 8)         # bp_addr, bp_len (sizeof(long) for execution)
    body = header.ljust(SIG_DATA_OFFSET, b"\0") + struct.pack("<Q", cookie)
    assert len(body) == ATTR_SIZE
    return body


def open_breakpoint(tid: int, address: int, cookie: int) -> int | None:
    """An fd holding an execution breakpoint at `address` in thread `tid` only; None if the kernel refuses."""
    number = SYS_PERF_EVENT_OPEN.get(platform.machine())
    if number is None:
        return None
    buf = ctypes.create_string_buffer(attr(address, cookie), ATTR_SIZE)
    fd = _syscall(ctypes.c_long(number), buf, ctypes.c_long(tid), ctypes.c_long(-1), ctypes.c_long(-1),
                  ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    return fd if fd >= 0 else None


def close_breakpoint(fd: int) -> None:
    """Remove it (the kernel first completes a hit's pending signal, so none arrives after an unseen hit)."""
    try:
        os.close(fd)
    except OSError:
        pass


def perf_trap_cookie(siginfo: bytes) -> int | None:
    """The sig_data of a perf breakpoint's SIGTRAP, or None if this SIGTRAP came from anything else."""
    if len(siginfo) < SIGINFO.size:
        return None
    _signo, _errno, code, _addr, data, kind = SIGINFO.unpack_from(siginfo)
    return data if code == TRAP_PERF and kind == PERF_TYPE_BREAKPOINT else None
