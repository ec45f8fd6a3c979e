"""System calls made by a process's thread on our behalf.

The thread's pc is pointed at a syscall instruction that already exists in an
executable mapping (the vdso, or libc), the arguments are set, and it is
single-stepped over that one instruction. No code is written and no library
code runs in the process. Registers are restored exactly afterwards.
"""

import os
import signal
import time

from hotpatch.arch.base import Arch
from hotpatch.errors import ProcessGone, RemoteCallError, RemoteSyscallError, ThreadGone, TraceError
from hotpatch.process import ptrace as P
from hotpatch.process.maps import Mapping
from hotpatch.process.memory import Memory
from hotpatch.process.threads import ThreadGroup

FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP,
                           signal.SIGABRT, signal.SIGSYS})


def find_syscall_gadget(arch: Arch, maps: list[Mapping], mem: Memory) -> int:
    """An existing syscall instruction: vdso first (small, always there), then other code."""
    ordered = sorted((m for m in maps if m.executable and m.readable),
                     key=lambda m: (m.path != "[vdso]", "libc" not in m.path, m.start))
    for m in ordered:
        if m.path == "[vsyscall]":
            continue
        pos, chunk = m.start, 1 << 16
        while pos < m.end:
            data = mem.read_available(pos, min(chunk, m.end - pos))
            if not data:
                break
            i = data.find(arch.syscall_insn)
            while i >= 0:
                if (pos + i) % arch.syscall_insn_align == 0:
                    return pos + i
                i = data.find(arch.syscall_insn, i + 1)
            pos += len(data) - len(arch.syscall_insn) + 1
    raise TraceError("no syscall instruction found in the process's code")


class RemoteSyscalls:
    """System calls (and, for frame registration only, function calls) made by a stopped thread."""

    def __init__(self, arch: Arch, threads: ThreadGroup, gadget: int, mem: Memory | None = None):
        self.arch, self.threads, self.gadget, self.mem = arch, threads, gadget, mem
        self.count = 0

    def call(self, tid: int, name: str, *args: int) -> int:
        """Run one syscall in stopped thread `tid`; returns its result (negative errno on failure).

        Never abandoned half-way: a thread left running with hijacked
        registers would crash the process.
        """
        with self.threads.waiter.uninterruptible():
            return self._call(tid, name, *args)

    def _call(self, tid: int, name: str, *args: int) -> int:
        arch, threads = self.arch, self.threads
        try:
            threads.leave_clone(tid, time.monotonic() + threads.stop_timeout)
            saved = P.get_regs(tid, arch.regs_type)
        except ThreadGone as e:
            raise ProcessGone(f"thread {tid} exited before a remote {name}") from e
        args6 = (list(args) + [0] * 6)[:6]   # unused argument registers zeroed: what a seccomp filter sees
        nr = arch.syscall_numbers[name]
        hijacked = arch.hijack_for_syscall(saved, self.gadget, nr, args6)
        after = arch.after_syscall_insn(self.gadget)
        deadline = time.monotonic() + threads.stop_timeout
        was_group_stop = threads.tracees[tid].group_stop
        result = None
        with threads.stepping(tid):
            try:
                while result is None:
                    P.set_regs(tid, hijacked)
                    status = threads.single_step(tid, deadline)
                    if status is None:
                        raise ProcessGone(f"thread {tid} exited during a remote {name}")
                    regs = P.get_regs(tid, arch.regs_type)
                    if arch.pc(regs) == after:
                        result = arch.syscall_result(regs)
                    sig, event = os.WSTOPSIG(status), status >> 16
                    if event or sig == signal.SIGTRAP:
                        continue
                    # A real signal arrived: deliver it on the original registers,
                    # never on hijacked ones, then take the thread back. It may
                    # stop anywhere, inside the handler too: what it is now is
                    # what must be restored, not what it was (restoring the old
                    # registers would skip the handler's sigreturn and leave the
                    # signal blocked for good).
                    P.set_regs(tid, saved)
                    threads.deliver_signal(tid, sig)
                    saved = P.get_regs(tid, arch.regs_type)
                    hijacked = arch.hijack_for_syscall(saved, self.gadget, nr, args6)
                P.set_regs(tid, saved)
                if was_group_stop:
                    threads.back_to_group_stop(tid, deadline)
            except ThreadGone as e:
                raise ProcessGone(f"thread {tid} exited during a remote {name}") from e
            finally:
                self._restore(tid, saved)
        self.count += 1
        return result

    def function(self, tid: int, address: int, args: list[int], trap: int, timeout: float) -> int:
        """Call the function at `address` in stopped thread `tid`; its return value.

        The thread returns into `trap` (a breakpoint instruction the caller
        placed in the image) and its registers are restored exactly. Signals
        for it meanwhile are delivered (the handler runs on top of the call);
        a fault inside the call, or no return within `timeout`, abandons the
        call (registers restored) and raises.
        """
        with self.threads.waiter.uninterruptible():
            return self._function(tid, address, args, trap, timeout)

    def _function(self, tid: int, address: int, args: list[int], trap: int, timeout: float) -> int:
        arch, threads = self.arch, self.threads
        try:
            threads.leave_clone(tid, time.monotonic() + threads.stop_timeout)
        except ThreadGone as e:
            raise ProcessGone(f"thread {tid} exited before a call in the process") from e
        saved = P.get_regs(tid, arch.regs_type)
        hijacked, sp, stack_bytes = arch.hijack_for_call(saved, address, args, trap)
        deadline = time.monotonic() + timeout
        with threads.stepping(tid):
            try:
                if stack_bytes:
                    if self.mem is None:
                        raise TraceError("a function call needs the process's memory")
                    self.mem.write(sp, stack_bytes)
                P.set_regs(tid, hijacked)
                sig = 0
                while True:
                    status = threads.run_stepping(tid, deadline, sig)
                    if status is None:
                        if tid not in threads.tracees:
                            raise ProcessGone(f"thread {tid} exited during a call in the process")
                        raise RemoteCallError(f"the call at {address:#x} in thread {tid} did not return "
                                              f"within {timeout:g} s; abandoned")
                    sig, event = os.WSTOPSIG(status), status >> 16
                    if event:
                        sig = 0
                        continue
                    regs = P.get_regs(tid, arch.regs_type)
                    if sig == signal.SIGTRAP and arch.returned_at(regs, trap):
                        return arch.call_result(regs)
                    if sig in FAULT_SIGNALS:
                        raise RemoteCallError(f"the call at {address:#x} in thread {tid} faulted "
                                              f"({signal.Signals(sig).name} at {arch.pc(regs):#x}); abandoned")
                    threads.signals_passed += 1   # delivered on the next run: the handler runs on top
            except ThreadGone as e:
                raise ProcessGone(f"thread {tid} exited during a call in the process") from e
            finally:
                self._restore(tid, saved)

    def _restore(self, tid: int, saved) -> None:
        """The thread's own registers back, on every path (a thread that exited needs none)."""
        if tid in self.threads.tracees:
            try:
                P.set_regs(tid, saved)
            except ThreadGone:
                pass

    def checked(self, tid: int, name: str, *args: int) -> int:
        result = self.call(tid, name, *args)
        if -4095 <= result < 0:
            raise RemoteSyscallError(name, -result)
        return result
