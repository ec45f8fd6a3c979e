"""ptrace requests python-ptrace lacks (SEIZE, INTERRUPT, LISTEN, regsets), on its raw binding.

Regsets (PTRACE_GETREGSET with NT_PRSTATUS) work the same on x86-64 and
aarch64, so the register layout is the architecture's, passed in, never the host's.
"""

import contextlib
import ctypes
import errno
import os
import signal
import time

from ptrace.binding.func import _ptrace as _libc_ptrace  # python-ptrace's raw ctypes binding

from hotpatch.errors import ThreadGone, TraceError
from hotpatch.process import procfs

PTRACE_POKEUSER = 6
PTRACE_CONT = 7
PTRACE_SYSCALL = 24
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

PTRACE_O_TRACESYSGOOD = 0x1   # system-call stops report SIGTRAP | 0x80
PTRACE_O_TRACECLONE = 0x8
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_STOP = 128
NT_PRSTATUS = 1
SIGINFO_SIZE = 128
WALL = 0x40000000

STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_FAILED = ctypes.c_ulong(-1).value


def _call(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    # The raw binding, not python-ptrace's ptrace() wrapper: the commit stop
    # makes several calls per thread, and the wrapper costs more than the call.
    result = _libc_ptrace(request, tid, addr, data)
    if result == _FAILED:
        _raise_errno(request, tid)
    return result


def _raise_errno(request: int, tid: int) -> None:
    """After a call returned -1: raise what errno means (PEEK calls may return -1 with errno 0)."""
    err = ctypes.get_errno()
    if err == 0:
        return
    if err == errno.ESRCH or (err == errno.EPERM and not _thread_alive(tid)):
        raise ThreadGone(tid)   # a dying thread answers EPERM to PTRACE_SEIZE
    if err == errno.EPERM:
        raise TraceError(f"ptrace on thread {tid} was refused (EPERM)", permission_remedy(tid))
    raise TraceError(f"ptrace request {request:#x} on thread {tid} failed: {os.strerror(err)}")


def _thread_alive(tid: int) -> bool:
    state = status_field(tid, "State")
    return state is not None and state[:1] not in ("Z", "X")


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
        text = procfs.read(f"/proc/{pid}/status")
    except OSError:
        return None
    key = b"\n" + name.encode() + b":"
    at = 0 if text.startswith(key[1:]) else text.find(key)
    if at < 0:
        return None
    start = text.index(b":", at) + 1
    end = text.find(b"\n", start)
    return text[start:end if end >= 0 else len(text)].decode(errors="replace").strip()


def status_fields(pid: int) -> dict[str, str] | None:
    """Every field of /proc/PID/status, read at once; None when it cannot be read (no such process)."""
    try:
        text = procfs.read(f"/proc/{pid}/status").decode(errors="replace")
    except OSError:
        return None
    return {name: value.strip() for name, _, value in (line.partition(":") for line in text.splitlines())}


def deliverable_signals(pid: int, tid: int) -> int:
    """The signals pending for thread `tid` (its own or its process's) that it does not block: a mask."""
    try:
        text = procfs.read(f"/proc/{pid}/task/{tid}/status")
        # Runs on every remote call: three fields found by name, not the whole file split
        pending, shared, blocked = (_hex_field(text, name) for name in (b"\nSigPnd:", b"\nShdPnd:", b"\nSigBlk:"))
    except (OSError, ValueError):
        return 0
    return (pending | shared) & ~blocked


def _hex_field(text: bytes, name: bytes) -> int:
    at = text.find(name)
    if at < 0:
        return 0
    start = at + len(name)
    end = text.find(b"\n", start)
    return int(text[start:end if end >= 0 else len(text)], 16)


def seize(tid: int, options: int = PTRACE_O_TRACECLONE | PTRACE_O_TRACESYSGOOD) -> None:
    _call(PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    _call(PTRACE_INTERRUPT, tid)


def interrupt_each(tids) -> list[int]:
    """PTRACE_INTERRUPT every tid; returns those that are gone.

    The commit stop's first loop: one raw call per thread, errors sorted out
    only when one fails.
    """
    gone = []
    raw, failed = _libc_ptrace, _FAILED
    for tid in tids:
        if raw(PTRACE_INTERRUPT, tid, 0, 0) == failed:
            try:
                _raise_errno(PTRACE_INTERRUPT, tid)
            except ThreadGone:
                gone.append(tid)
    return gone


def detach_each(tids) -> None:
    """PTRACE_DETACH every tid, ignoring failures: a thread that exited, or
    one not in a ptrace-stop, which the kernel detaches when we exit."""
    raw = _libc_ptrace
    for tid in tids:
        raw(PTRACE_DETACH, tid, 0, 0)


def cont(tid: int, sig: int = 0) -> None:
    _call(PTRACE_CONT, tid, 0, sig)


def listen(tid: int) -> None:
    _call(PTRACE_LISTEN, tid)


def detach(tid: int, sig: int = 0) -> None:
    _call(PTRACE_DETACH, tid, 0, sig)


def syscall(tid: int, sig: int = 0) -> None:
    """PTRACE_SYSCALL: resume to the next system-call entry or exit."""
    _call(PTRACE_SYSCALL, tid, 0, sig)


def singlestep(tid: int, sig: int = 0) -> None:
    _call(PTRACE_SINGLESTEP, tid, 0, sig)


def get_event_msg(tid: int) -> int:
    value = ctypes.c_ulong()
    _call(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(value))
    return value.value


def get_siginfo(tid: int) -> bytes:
    """The siginfo_t of the signal a thread in signal-delivery-stop is about to take."""
    buf = ctypes.create_string_buffer(SIGINFO_SIZE)
    _call(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(buf))
    return buf.raw


def get_regs(tid: int, regs_type):
    regs = regs_type()
    vec = iovec(ctypes.addressof(regs), ctypes.sizeof(regs))
    _call(PTRACE_GETREGSET, tid, NT_PRSTATUS, ctypes.addressof(vec))
    return regs


class RegsReader:
    """GETREGSET into one reused buffer: the commit stop reads every thread's registers."""

    def __init__(self, regs_type):
        self.regs = regs_type()
        self.size = ctypes.sizeof(self.regs)
        self.vec = iovec(ctypes.addressof(self.regs), self.size)
        self.vec_addr = ctypes.addressof(self.vec)

    def read(self, tid: int):
        self.vec.iov_len = self.size
        _call(PTRACE_GETREGSET, tid, NT_PRSTATUS, self.vec_addr)
        return self.regs


def poke_user(tid: int, offset: int, value: int) -> None:
    _call(PTRACE_POKEUSER, tid, offset, value)


def set_regset(tid: int, note: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    vec = iovec(ctypes.addressof(buf), len(data))
    _call(PTRACE_SETREGSET, tid, note, ctypes.addressof(vec))


def apply_writes(tid: int, writes) -> None:
    """Arch debug-register writes: ("user", offset, value) or ("regset", note type, bytes)."""
    for kind, where, what in writes:
        if kind == "user":
            poke_user(tid, where, what)
        else:
            set_regset(tid, where, what)


def set_regs(tid: int, regs) -> None:
    vec = iovec(ctypes.addressof(regs), ctypes.sizeof(regs))
    _call(PTRACE_SETREGSET, tid, NT_PRSTATUS, ctypes.addressof(vec))


class Waiter:
    """waitpid for tracee events with a deadline.

    SIGCHLD is blocked and taken with sigtimedwait, so a wait sleeps until an
    event or the deadline; a tracee that never stops (frozen cgroup, D state)
    cannot hang hotpatch.
    """

    def __init__(self, abort_check=None):
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        self.abort_check = abort_check   # raises to abandon a wait (a termination request)
        self._critical = 0

    @contextlib.contextmanager
    def uninterruptible(self):
        """Waits inside here are never abandoned: a hijacked thread, an undo in progress."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1

    def close(self) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)

    def poll(self, expected: "set[int] | None" = None) -> list[tuple[int, int]]:
        """Pending events: first of the `expected` tids one by one, then of anyone.

        waitpid(-1) walks every tracee in the kernel; with a thousand threads a
        loop of those is quadratic, while waitpid(tid) finds its task directly.
        """
        events = []
        for tid in list(expected or ()):
            try:
                got, status = os.waitpid(tid, os.WNOHANG | WALL)
            except ChildProcessError:
                continue
            if got:
                events.append((got, status))
        while True:
            try:
                tid, status = os.waitpid(-1, os.WNOHANG | WALL)
            except ChildProcessError:
                break
            if tid == 0:
                break
            events.append((tid, status))
        return events

    def wait(self, deadline: float, expected: "set[int] | None" = None) -> list[tuple[int, int]]:
        """Events now, or the first ones to come before the deadline (possibly none)."""
        while True:
            events = self.poll(expected)
            if events:
                return events
            if self.abort_check and not self._critical:
                self.abort_check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            signal.sigtimedwait({signal.SIGCHLD}, min(remaining, 0.1))
