"""System calls made by a process's thread on our behalf.

The thread's pc is pointed at a system call instruction that already exists
in an executable mapping (libc, the vdso), the arguments are set, and it is
resumed to the system call's exit; its own registers are then put back
exactly. No code is written and no library code runs in the process.

Preferably that instruction is followed by a return into a loop (see
parking.py): then the thread is never single-stepped, and at every instant
a tracer that dies leaves it parked in the loop with its registers
journaled, never running on with borrowed ones. Without such code in the
process (never seen on x86-64 or AArch64 glibc) the instruction is
single-stepped, as before.
"""

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

from hotpatch.arch.base import Arch
from hotpatch.errors import ProcessGone, RemoteCallError, RemoteSyscallError, ThreadGone, TraceError
from hotpatch.process import parking
from hotpatch.process import ptrace as P
from hotpatch.process.maps import Mapping
from hotpatch.process.memory import Memory
from hotpatch.process.threads import ThreadGroup

FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP,
                           signal.SIGABRT, signal.SIGSYS})
SYSCALL_STOP = signal.SIGTRAP | 0x80   # PTRACE_O_TRACESYSGOOD
CALL_POLL = 0.002   # a call returns into a loop, not a trap: the thread is looked at this often


# Where a pattern was found before, as (mapping's path, offset in it): processes of one binary share
# their vdso and libc, so the next process is checked there first (its bytes read and compared) rather
# than searched.
_found_at: dict[tuple[bytes, int], tuple[str, int]] = {}


def find_code(arch: Arch, maps: list[Mapping], mem: Memory, pattern: bytes, align: int) -> int | None:
    """The first occurrence of `pattern` at an `align`ed address of executable code: vdso, libc, the rest."""
    ordered = sorted((m for m in maps if m.executable and m.readable),
                     key=lambda m: (m.path != "[vdso]", "libc" not in m.path, m.start))
    known = _found_at.get((pattern, align))
    if known is not None:
        m = next((m for m in ordered if m.path == known[0]), None)
        if m is not None and m.start + known[1] + len(pattern) <= m.end \
                and mem.read_available(m.start + known[1], len(pattern)) == pattern:
            return m.start + known[1]
    for m in ordered:
        if m.path == "[vsyscall]":
            continue
        pos, chunk = m.start, 1 << 16
        while pos < m.end:
            data = mem.read_available(pos, min(chunk, m.end - pos))
            if len(data) < len(pattern):
                break
            i = data.find(pattern)
            while i >= 0:
                if (pos + i) % align == 0:
                    _found_at[(pattern, align)] = (m.path, pos + i - m.start)
                    return pos + i
                i = data.find(pattern, i + 1)
            pos += len(data) - len(pattern) + 1
    return None


def find_syscall_gadget(arch: Arch, maps: list[Mapping], mem: Memory) -> int:
    """An existing syscall instruction: vdso first (small, always there), then other code."""
    found = find_code(arch, maps, mem, arch.syscall_insn, arch.syscall_insn_align)
    if found is None:
        raise TraceError("no syscall instruction found in the process's code")
    return found


@dataclass(frozen=True)
class Parking:
    """A returning system call and the loop its return goes to."""
    gadget: int
    park: int


def find_parking(arch: Arch, maps: list[Mapping], mem: Memory) -> Parking | None:
    gadget = find_code(arch, maps, mem, arch.returning_syscall, arch.syscall_insn_align)
    if gadget is None:
        return None
    if arch.park_insn is None:   # the return loops on itself when it returns to itself
        return Parking(gadget, gadget + len(arch.syscall_insn))
    park = find_code(arch, maps, mem, arch.park_insn, 1)
    return Parking(gadget, park) if park is not None else None


@dataclass
class _Held:
    """A thread lent for several system calls in a row (RemoteSyscalls.held)."""
    tid: int
    own: list                 # [its own registers]: what they are after a signal it took meanwhile
    was_group_stop: bool
    at_exit: bool = False     # stopped at the exit of the last call, on borrowed registers
    stepped: bool = False     # no room for the journal: each call single-stepped


class RemoteSyscalls:
    """System calls (and, for frame registration only, function calls) made by a stopped thread."""

    def __init__(self, arch: Arch, threads: ThreadGroup, gadget: int, mem: Memory | None = None,
                 parking: Parking | None = None):
        self.arch, self.threads, self.gadget, self.mem = arch, threads, gadget, mem
        self.parking = parking
        self.count = 0
        self.left_parked: set[tuple[int, bool]] = set()   # (thread, parked) whose registers could not be restored
        self._held: _Held | None = None

    @property
    def call_site(self) -> int:
        """The system call instruction every remote call runs (what a seccomp filter sees as its pc)."""
        return self.parking.gadget if self.parking is not None else self.gadget

    def call(self, tid: int, name: str, *args: int, mark: Callable[[int], None] | None = None) -> int:
        """Run one syscall in stopped thread `tid`; returns its result (negative errno on failure).

        `mark(result)` runs while the thread is still parked, so that what the
        call made is recorded before a tracer's death could lose it.
        Never abandoned half-way by a termination request.
        """
        with self.threads.waiter.uninterruptible():
            return self._call(tid, name, *args, mark=mark)

    @contextlib.contextmanager
    def held(self, tid: int):
        """System calls on stopped thread `tid` in a row: between two, it waits at the exit of the last one
        (still in the parking gadget, its journal on its stack: what a tracer's death leaves there is what
        it leaves during any call), set up for the next one there, rather than brought back to its own
        registers and stopped again (a round trip through the kernel and the scheduler each). Brought
        back when the block ends, whatever ends it. Without a parking gadget, each call as usual."""
        if self.parking is None or self.mem is None or self._held is not None:
            yield
            return
        threads = self.threads
        with threads.waiter.uninterruptible():
            try:
                threads.leave_clone(tid, time.monotonic() + threads.stop_timeout)
                own = [P.get_regs(tid, self.arch.regs_type)]
            except ThreadGone as e:
                raise ProcessGone(f"thread {tid} exited before a remote system call") from e
            held = self._held = _Held(tid, own, threads.tracees[tid].group_stop)
            try:
                with threads.stepping(tid):
                    try:
                        yield
                    finally:
                        self._held = None
                        self._give_back(held)
            except ThreadGone as e:
                raise ProcessGone(f"thread {tid} exited after a remote system call") from e

    def _give_back(self, held: _Held) -> None:
        """The end of a held block: the thread out of the last call, on its own registers."""
        if not held.at_exit:
            self._restore(held.tid, held.own[0], parked=not held.stepped)
            return
        held.at_exit = False
        try:
            self._parked_return(held.tid, held.own, time.monotonic() + self.threads.stop_timeout,
                                held.was_group_stop)
        except BaseException:
            self._restore(held.tid, held.own[0], parked=True)
            raise

    def _held_call(self, held: _Held, name: str, nr: int, args6: list[int],
                   mark: Callable[[int], None] | None) -> int:
        tid, deadline = held.tid, time.monotonic() + self.threads.stop_timeout
        try:
            if not held.stepped:
                held.at_exit = False   # until this call is back at its exit, nothing is known of where it is
                result = self._parked_call(tid, nr, args6, held.own, deadline)
                if result is not None:
                    held.at_exit = True
                    if mark is not None:
                        mark(result)
                    self.count += 1
                    return result
                held.stepped = True   # no room for the journal on its stack (nothing was changed)
            result = self._stepped(tid, nr, args6, held.own, deadline)
            if mark is not None:
                mark(result)
            self.count += 1
            return result
        except ThreadGone as e:
            raise ProcessGone(f"thread {tid} exited during a remote {name}") from e

    def _call(self, tid: int, name: str, *args: int, mark: Callable[[int], None] | None = None) -> int:
        arch, threads = self.arch, self.threads
        held = self._held
        if held is not None and held.tid == tid:
            return self._held_call(held, name, arch.syscall_numbers[name], (list(args) + [0] * 6)[:6], mark)
        try:
            threads.leave_clone(tid, time.monotonic() + threads.stop_timeout)
            saved = P.get_regs(tid, arch.regs_type)
        except ThreadGone as e:
            raise ProcessGone(f"thread {tid} exited before a remote {name}") from e
        args6 = (list(args) + [0] * 6)[:6]   # unused argument registers zeroed: what a seccomp filter sees
        nr = arch.syscall_numbers[name]
        deadline = time.monotonic() + threads.stop_timeout
        own = [saved]   # the thread's own registers: what they are after a signal it took meanwhile
        parked = self.parking is not None and self.mem is not None
        with threads.stepping(tid):
            try:
                result = self._parked(tid, nr, args6, own, deadline, mark) if parked else None
                if result is None:   # no parking gadget, or no room for the journal on its stack
                    parked = False
                    result = self._stepped(tid, nr, args6, own, deadline)
                    if mark is not None:
                        mark(result)
            except ThreadGone as e:
                raise ProcessGone(f"thread {tid} exited during a remote {name}") from e
            finally:
                self._restore(tid, own[0], parked=parked)
        self.count += 1
        return result

    def _parked(self, tid: int, nr: int, args6: list[int], own: list, deadline: float,
                mark: Callable[[int], None] | None) -> int | None:
        """The system call on the parking gadget; None when the journal has no room on the thread's
        stack (nothing was changed then). Leaves the thread in an interrupt stop, registers restored."""
        was_group_stop = self.threads.tracees[tid].group_stop
        result = self._parked_call(tid, nr, args6, own, deadline)
        if result is None:
            return None
        if mark is not None:
            mark(result)
        self._parked_return(tid, own, deadline, was_group_stop)
        return result

    def _parked_call(self, tid: int, nr: int, args6: list[int], own: list, deadline: float) -> int | None:
        """Set up and run to its exit the system call on the parking gadget; None when the journal has
        no room on the thread's stack (nothing was changed then). The thread stays at the exit: from
        there the next call is set up, or _parked_return brings it back."""
        arch, threads, mem, parked = self.arch, self.threads, self.mem, self.parking
        assert mem is not None and parked is not None
        saved = own[0]
        result = None
        while result is None:
            journal = parking.encode(parking.Journal(tid, nr, tuple(args6), parked.gadget, parked.park,
                                                     bytes(saved)))
            hijacked, address, prefix = arch.hijack_parked(saved, parked.gadget, parked.park, nr, args6,
                                                           len(journal))
            try:
                mem.write(address, prefix + journal)
            except (OSError, TraceError):
                return None   # below its stack mapping (a main thread's stack grows on demand)
            P.set_regs(tid, hijacked)
            entered = False
            while True:
                status = threads.syscall_stop(tid, deadline)
                if status is None:
                    raise ThreadGone(tid)
                sig, event = os.WSTOPSIG(status), status >> 16
                if sig == SYSCALL_STOP and not event:
                    if entered:
                        result = arch.syscall_result(P.get_regs(tid, arch.regs_type))
                        break
                    entered = True
                    continue
                if event:
                    continue   # an interrupt or group-stop before the call: on to it
                # A signal before the call (one pending at the exit of the call before, too):
                # delivered on the thread's own registers, then the call is set up again on
                # what they are after it.
                P.set_regs(tid, saved)
                threads.deliver_signal(tid, sig)
                saved = own[0] = P.get_regs(tid, arch.regs_type)
                break
        return result

    def _parked_return(self, tid: int, own: list, deadline: float, was_group_stop: bool) -> None:
        """From the exit of a parked call back to a stop outside it, on the thread's own registers."""
        arch, threads = self.arch, self.threads
        saved = own[0]
        # Before the return runs: a signal the call raised (a seccomp kill's SIGSYS) is
        # delivered first, else an interrupt stops it.
        pending = P.deliverable_signals(threads.pid, tid)
        status = threads.interrupt_stop(tid, deadline, interrupt=not pending)
        if status >> 16 == P.PTRACE_EVENT_STOP:
            P.set_regs(tid, saved)
            threads.tracees[tid].group_stop = was_group_stop and os.WSTOPSIG(status) in P.STOP_SIGNALS
        else:   # a signal came first: delivered on its own registers, it is stopped again after it
            P.set_regs(tid, saved)
            threads.deliver_signal(tid, os.WSTOPSIG(status))
            own[0] = P.get_regs(tid, arch.regs_type)

    def _stepped(self, tid: int, nr: int, args6: list[int], own: list, deadline: float) -> int:
        """The system call single-stepped on any syscall instruction (no parking gadget)."""
        arch, threads = self.arch, self.threads
        saved = own[0]
        hijacked = arch.hijack_for_syscall(saved, self.call_site, nr, args6)
        after = arch.after_syscall_insn(self.call_site)
        was_group_stop = threads.tracees[tid].group_stop
        result = None
        while result is None:
            P.set_regs(tid, hijacked)
            status = threads.single_step(tid, deadline)
            if status is None:
                raise ThreadGone(tid)
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
            saved = own[0] = P.get_regs(tid, arch.regs_type)
            hijacked = arch.hijack_for_syscall(saved, self.call_site, nr, args6)
        P.set_regs(tid, saved)
        if was_group_stop:
            threads.back_to_group_stop(tid, deadline)
        return result

    def function(self, tid: int, address: int, args: list[int], trap: int, timeout: float, tag: int = 0,
                 mark: Callable[[int], None] | None = None) -> int:
        """Call the function at `address` in stopped thread `tid`; its return value.

        The thread returns into `trap`, a loop the caller placed in the image
        (a breakpoint in images of hotpatch 0.1), and its registers are
        restored exactly. Returning into a loop, it is parked there with its
        registers journaled (`tag` says what the call was) if the tracer dies
        meanwhile; `mark(result)` runs before it leaves the loop. Signals for
        it meanwhile are delivered (the handler runs on top of the call); a
        fault inside the call, or no return within `timeout`, abandons the
        call (registers restored) and raises.
        """
        with self.threads.waiter.uninterruptible():
            return self._function(tid, address, args, trap, timeout, tag, mark)

    def _function(self, tid: int, address: int, args: list[int], trap: int, timeout: float, tag: int,
                  mark: Callable[[int], None] | None) -> int:
        arch, threads = self.arch, self.threads
        try:
            threads.leave_clone(tid, time.monotonic() + threads.stop_timeout)
        except ThreadGone as e:
            raise ProcessGone(f"thread {tid} exited before a call in the process") from e
        saved = P.get_regs(tid, arch.regs_type)
        if self.mem is not None and self.mem.read_available(trap, len(arch.return_loop)) == arch.return_loop:
            with threads.stepping(tid):
                try:
                    return self._function_parked(tid, address, args, trap, timeout, tag, mark, saved)
                except ThreadGone as e:
                    raise ProcessGone(f"thread {tid} exited during a call in the process") from e
                finally:
                    self._restore(tid, saved, parked=True)
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
                        result = arch.call_result(regs)
                        if mark is not None:
                            mark(result)
                        return result
                    if sig in FAULT_SIGNALS:
                        raise RemoteCallError(f"the call at {address:#x} in thread {tid} faulted "
                                              f"({signal.Signals(sig).name} at {arch.pc(regs):#x}); abandoned")
                    threads.signals_passed += 1   # delivered on the next run: the handler runs on top
            except ThreadGone as e:
                raise ProcessGone(f"thread {tid} exited during a call in the process") from e
            finally:
                self._restore(tid, saved)

    def _function_parked(self, tid: int, address: int, args: list[int], loop: int, timeout: float, tag: int,
                         mark: Callable[[int], None] | None, saved) -> int:
        arch, threads, mem = self.arch, self.threads, self.mem
        assert mem is not None
        args6 = (list(args) + [0] * 6)[:6]
        journal = parking.encode(parking.Journal(tid, parking.CALL | tag, tuple(args6), address, loop, bytes(saved)))
        hijacked, at, prefix = arch.hijack_parked_call(saved, address, args, loop, len(journal))
        mem.write(at, prefix + journal)
        P.set_regs(tid, hijacked)
        deadline = time.monotonic() + timeout
        P.cont(tid)
        while True:
            status = threads.wait_stepping(tid, min(deadline, time.monotonic() + CALL_POLL))
            if status is None:
                status = threads.interrupt_running(tid, deadline + threads.stop_timeout)
                if time.monotonic() >= deadline and arch.pc(P.get_regs(tid, arch.regs_type)) != loop:
                    raise RemoteCallError(f"the call at {address:#x} in thread {tid} did not return "
                                          f"within {timeout:g} s; abandoned")
            sig, event = os.WSTOPSIG(status), status >> 16
            if event:
                regs = P.get_regs(tid, arch.regs_type)
                if arch.pc(regs) == loop:
                    result = arch.call_result(regs)
                    if mark is not None:
                        mark(result)
                    return result
                P.cont(tid)
                continue
            if sig in FAULT_SIGNALS:
                pc = arch.pc(P.get_regs(tid, arch.regs_type))
                raise RemoteCallError(f"the call at {address:#x} in thread {tid} faulted "
                                      f"({signal.Signals(sig).name} at {pc:#x}); abandoned")
            threads.signals_passed += 1
            P.cont(tid, sig)   # the handler runs on top of the call

    def _restore(self, tid: int, saved, parked: bool = False) -> None:
        """The thread's own registers back, on every path (a thread that exited needs none).

        A thread that is alive but out of reach (frozen by a cgroup while it
        was resumed to the call) keeps the borrowed registers: parked, it
        will make the call and wait in the loop for the next run; this is
        said in the error that is on its way (it is in `left_parked`).
        """
        if tid in self.threads.tracees:
            try:
                P.set_regs(tid, saved)
            except ThreadGone:
                if os.path.exists(f"/proc/{self.threads.pid}/task/{tid}"):
                    self.left_parked.add((tid, parked))

    def checked(self, tid: int, name: str, *args: int, mark: Callable[[int], None] | None = None) -> int:
        result = self.call(tid, name, *args, mark=mark)
        if -4095 <= result < 0:
            raise RemoteSyscallError(name, -result)
        return result
