"""ptrace requests python-ptrace lacks (SEIZE, INTERRUPT, LISTEN, regsets), on its raw binding.

Regsets (PTRACE_GETREGSET with NT_PRSTATUS) work the same on x86-64 and
aarch64, so the register layout is the architecture's, passed in, never the host's.
"""

import ctypes
import errno
import os
import signal
import time

from ptrace import PtraceError
from ptrace.binding.func import ptrace as _raw_ptrace

from hotpatch.errors import TargetGone, TraceError

PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_DETACH = 17
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

PTRACE_O_TRACECLONE = 0x8
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_STOP = 128
NT_PRSTATUS = 1
WALL = 0x40000000

STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class ThreadGoneError(Exception):
    """ESRCH: the thread exited (or is not stopped) under us."""


def _call(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    try:
        return _raw_ptrace(request, tid, addr, data)
    except PtraceError as e:
        if e.errno == errno.ESRCH:
            raise ThreadGoneError(tid) from e
        if e.errno == errno.EPERM:
            raise TraceError(f"ptrace on thread {tid} was refused (EPERM)", permission_remedy(tid)) from e
        raise TraceError(f"ptrace request {request:#x} on thread {tid} failed: {os.strerror(e.errno or 0)}") from e


def permission_remedy(pid: int) -> str:
    try:
        scope = open("/proc/sys/kernel/yama/ptrace_scope").read().strip()
    except OSError:
        scope = None
    tracer = status_field(pid, "TracerPid")
    if tracer and tracer != "0":
        return f"it is already traced by process {tracer} (a debugger?); detach that first"
    if os.geteuid() != 0:
        extra = f" (kernel.yama.ptrace_scope = {scope})" if scope else ""
        return f"run as root or as the process's owner with CAP_SYS_PTRACE{extra}"
    if scope == "3":
        return "kernel.yama.ptrace_scope = 3 forbids all attaching until reboot"
    return "check kernel.yama.ptrace_scope and security modules"


def status_field(pid: int, name: str) -> str | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def seize(tid: int, options: int = PTRACE_O_TRACECLONE) -> None:
    _call(PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    _call(PTRACE_INTERRUPT, tid)


def cont(tid: int, sig: int = 0) -> None:
    _call(PTRACE_CONT, tid, 0, sig)


def listen(tid: int) -> None:
    _call(PTRACE_LISTEN, tid)


def detach(tid: int, sig: int = 0) -> None:
    _call(PTRACE_DETACH, tid, 0, sig)


def singlestep(tid: int, sig: int = 0) -> None:
    _call(PTRACE_SINGLESTEP, tid, 0, sig)


def get_event_msg(tid: int) -> int:
    value = ctypes.c_ulong()
    _call(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(value))
    return value.value


def get_regs(tid: int, regs_type):
    regs = regs_type()
    vec = iovec(ctypes.addressof(regs), ctypes.sizeof(regs))
    _call(PTRACE_GETREGSET, tid, NT_PRSTATUS, ctypes.addressof(vec))
    return regs


def set_regs(tid: int, regs) -> None:
    vec = iovec(ctypes.addressof(regs), ctypes.sizeof(regs))
    _call(PTRACE_SETREGSET, tid, NT_PRSTATUS, ctypes.addressof(vec))


class Waiter:
    """waitpid for tracee events with a deadline.

    SIGCHLD is blocked and taken with sigtimedwait, so a wait sleeps until an
    event or the deadline; a tracee that never stops (frozen cgroup, D state)
    cannot hang hotpatch.
    """

    def __init__(self):
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})

    def close(self) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)

    def poll(self) -> list[tuple[int, int]]:
        events = []
        while True:
            try:
                tid, status = os.waitpid(-1, os.WNOHANG | WALL)
            except ChildProcessError:
                break
            if tid == 0:
                break
            events.append((tid, status))
        return events

    def wait(self, deadline: float) -> list[tuple[int, int]]:
        """Events now, or the first ones to come before the deadline (possibly none)."""
        while True:
            events = self.poll()
            if events:
                return events
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            signal.sigtimedwait({signal.SIGCHLD}, min(remaining, 0.5))


def ensure_alive(pid: int) -> None:
    if not os.path.exists(f"/proc/{pid}"):
        raise TargetGone(f"process {pid} does not exist")
