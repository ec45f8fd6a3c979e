"""Every thread of a process under ptrace: seize, stop, resume, detach.

PTRACE_SEIZE leaves threads running; PTRACE_INTERRUPT stops them without
sending SIGSTOP (which would race with the program's own job control).
Threads stay seized for the whole session, so the commit stop costs only
INTERRUPT and waitpid per thread.

Signals: a thread reporting a signal-delivery-stop is resumed at once with
that signal, so the kernel delivers it with its siginfo intact (payload and
sender), exactly once; it is then interrupted again. A thread in group-stop
(the process was stopped with SIGSTOP) is resumed with PTRACE_LISTEN, so it
stays stopped, and detach leaves it stopped.
"""

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from hotpatch.errors import ProcessGone, ThreadGone, TraceError
from hotpatch.process import perfbp, procfs
from hotpatch.process import ptrace as P

RUNNING, STOPPED = "running", "stopped"
STOP_CHUNK = 64   # threads interrupted between two reaps
_INTERRUPT_STOP = P.PTRACE_EVENT_STOP << 8 | signal.SIGTRAP   # wait status >> 8 of an interrupt stop
COOKIE_TAG = 0x6870 << 48   # "hp": the sig_data of this session's breakpoints, numbered below it
SIGTRAP_BIT = 1 << (signal.SIGTRAP - 1)


@dataclass
class Tracee:
    tid: int
    state: str = RUNNING
    hold: bool = False          # we want it stopped
    interrupted: bool = False   # INTERRUPT sent, stop not seen yet
    group_stop: bool = False
    stepping: bool = False      # events go to `events`, for single_step()
    events: list[int] = field(default_factory=list)
    view: Any = None            # thread_view(registers) read as its held stop arrived; None while running
    raw_regs: bytes = b""       # and the registers themselves, when keep_registers is set
    watch: int | None = None    # an armed execution breakpoint's address (catch())
    caught: bool = False        # it fired: held at `watch`, its SIGTRAP not delivered
    catch_fd: int | None = None  # the perf event holding it; None: the thread's debug registers do
    cookie: int = 0             # the sig_data its perf SIGTRAP carries
    step_from: int | None = None  # hit a perf breakpoint here (AArch64): resumed by single-step until it moves
    in_clone: bool = False      # held in its clone event: inside clone(), whose result is not yet in its registers


def list_tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError as e:
        raise ProcessGone(f"process {pid} exited") from e


def stat_after_comm(path: str) -> bytes | None:
    """A /proc .../stat line from field 3 on (the command name, field 2, may hold spaces and
    parentheses); None if it cannot be read."""
    try:
        stat = procfs.read(path)
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:]


def thread_count(pid: int) -> int | None:
    """num_threads from /proc/PID/stat, field 20 (threads not yet reaped included)."""
    fields = stat_after_comm(f"/proc/{pid}/stat")
    return None if fields is None else int(fields.split(None, 18)[17])


def running_threads(pid: int, tids) -> set[int]:
    """Those of `tids` the kernel shows running or runnable (state R) right now."""
    running = set()
    for tid in tids:
        try:
            stat = procfs.read(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            continue
        if stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] == b"R":
            running.add(tid)
    return running


def thread_name(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


class ThreadGroup:
    """Every thread of one process, seized; their ptrace state is kept here and only here.

    `thread_view` turns a thread's registers into what the caller needs of it
    (Arch.thread_view): it is applied as each held stop arrives, overlapping
    the kernel still stopping the others, and kept in Tracee.view.
    """

    def __init__(self, pid: int, waiter: P.Waiter, regs_type=None,
                 thread_view: Callable[[Any], Any] | None = None, stop_timeout: float = 5.0):
        self.pid = pid
        self.waiter = waiter
        self.stop_timeout = stop_timeout
        self.tracees: dict[int, Tracee] = {}
        self.running: set[int] = set()   # tracees not in a ptrace-stop: O(1) "all stopped?"
        self.hold_new = False
        self.gone = False
        self._regs = P.RegsReader(regs_type) if regs_type is not None else None
        self.keep_registers = False   # keep each held thread's registers as bytes too (precise stacks)
        self._thread_view = thread_view
        self.running_hint: set[int] = set()
        self.partial = False   # some threads already detached: do not look for new ones
        self.signals_passed = 0
        self.cookies: set[int] = set()   # of every breakpoint armed: a late SIGTRAP of one is never delivered

    # -- attach ---------------------------------------------------------
    def seize_all(self) -> None:
        """Seize every thread; rescan until a pass finds no new one."""
        gone: set[int] = set()   # listed but exiting (a zombie stays listed): never retried
        while True:
            new = [tid for tid in list_tids(self.pid) if tid not in self.tracees and tid not in gone]
            if not new:
                break
            for tid in new:
                try:
                    P.seize(tid)
                except ThreadGone:
                    gone.add(tid)
                    if tid == self.pid:
                        raise ProcessGone(f"process {self.pid} exited")
                    continue
                except TraceError:
                    # Born of a seized thread, it is ours already (PTRACE_O_TRACECLONE)
                    # though its clone event is still queued: adopt it.
                    if P.status_field(tid, "TracerPid") != str(os.getpid()):
                        raise
                self._add(tid)
                if self.hold_new:
                    self._interrupt(self.tracees[tid])
        if self.pid not in self.tracees:
            raise ProcessGone(f"process {self.pid} exited")

    # -- stopping -------------------------------------------------------
    def stop_all(self, timeout: float | None = None, running_hint: set[int] | None = None) -> None:
        """Interrupt every thread and wait until each is in a ptrace-stop.

        Threads in `running_hint` (seen running just before) are interrupted
        last and resumed first: a thread at work notices a stop, one blocked
        in a system call does not unless it is woken meanwhile. Stops are
        reaped (their registers read) while later threads are still being
        interrupted.
        """
        deadline = time.monotonic() + (timeout or self.stop_timeout)
        if running_hint is not None:
            self.running_hint = running_hint
        self.hold_new = True
        while True:
            todo, hinted = [], []
            for t in self.tracees.values():
                t.hold = True
                if t.state == RUNNING and not t.interrupted:
                    (hinted if t.tid in self.running_hint else todo).append(t)
            todo += hinted
            pending: list[int] = []
            for first in range(0, len(todo), STOP_CHUNK):
                # Reap the chunks sent earlier (stopped by now, mostly) before
                # sending the next: the wait below then has little left.
                pending = self._reap(pending)
                chunk = [t.tid for t in todo[first:first + STOP_CHUNK]]
                gone = P.interrupt_each(chunk)
                for t in todo[first:first + STOP_CHUNK]:
                    t.interrupted = True
                for tid in gone:
                    self._drop(tid)
                pending += chunk
            self._pump_until(lambda: not self.running, deadline, "stop")
            # A thread cloned with CLONE_UNTRACED escapes PTRACE_O_TRACECLONE:
            # rescan, unless the kernel's thread count says every thread is ours
            # (one small read instead of listing a thousand tasks). Once the
            # others are detached (detach_all(keep=...)) there is nothing to find.
            if self.partial or thread_count(self.pid) == len(self.tracees):
                return
            before = len(self.tracees)
            self.seize_all()
            if len(self.tracees) == before:
                return

    def _reap(self, tids: list[int]) -> list[int]:
        """Handle the events of `tids` that have one; returns those still running."""
        waitpid, flags = os.waitpid, os.WNOHANG | P.WALL
        left = []
        for tid in tids:
            try:
                got, status = waitpid(tid, flags)
            except ChildProcessError:
                continue
            if got:
                self._on_event(got, status)
            if tid in self.running:
                left.append(tid)
        return left

    def stop_thread(self, tid: int) -> None:
        t = self.tracees[tid]
        t.hold = True
        if t.state == RUNNING and not t.interrupted:
            self._interrupt(t)
        self._pump_until(lambda: t.state == STOPPED or tid not in self.tracees,
                         time.monotonic() + self.stop_timeout, "stop")
        if tid not in self.tracees:
            raise ThreadGone(tid)

    def stopped_tids(self, usable_only: bool = True) -> list[int]:
        """Threads in a ptrace-stop; usable_only leaves out those held in group-stop."""
        return [t.tid for t in self.tracees.values()
                if t.state == STOPPED and not (usable_only and t.group_stop)]

    # -- resuming -------------------------------------------------------
    def resume_all(self) -> None:
        self.hold_new = False
        for t in self._resume_order():
            t.hold = False
            if t.state == STOPPED:
                self._resume(t)

    def _resume_order(self) -> list[Tracee]:
        """Threads seen running first (they were interrupted last), then the rest in stop order."""
        hint = self.running_hint
        first = [t for t in self.tracees.values() if t.tid in hint]
        return first + [t for t in self.tracees.values() if t.tid not in hint]

    def resume_thread(self, tid: int) -> None:
        t = self.tracees.get(tid)
        if t is not None:
            t.hold = self.hold_new
            if t.state == STOPPED and not t.hold:
                self._resume(t)

    def detach_all(self, keep: int | None = None) -> None:
        """Detach every thread, stopping first those running (DETACH needs a stopped tracee).

        `keep` stays stopped and traced: work left for one thread (freeing
        memory) without holding up the others.
        """
        try:
            if any(t.state != STOPPED for t in self.tracees.values()):
                # Short: a thread that cannot stop (frozen) already cost one full
                # timeout; whatever stays attached, the kernel detaches when we exit.
                self.stop_all(timeout=min(self.stop_timeout, 1.0))
            self._finish_steps_over()
        finally:
            P.detach_each([t.tid for t in self._resume_order() if t.tid != keep])
            kept = self.tracees.get(keep)
            self.tracees.clear()
            self.running.clear()
            if kept is not None:
                self.partial = True
                self.tracees[keep] = kept
                if kept.state != STOPPED:
                    self.running.add(keep)
            # Queued events: the detached threads' are stale, the kept one's counts.
            for tid, status in self.waiter.poll():
                if tid == keep:
                    self._on_event(tid, status)

    def leave_clone(self, tid: int, deadline: float) -> None:
        """Let a held thread stopped in its clone event finish the system call, and hold it again after.

        At that stop the thread is still inside clone(): its registers show the
        call in progress, and the child's id is written into them only when
        it resumes. Registers saved there and restored later would make
        clone() return an error to a caller whose thread was in fact created
        (glibc then creates a second one on the same stack).
        """
        t = self.tracees[tid]
        while t.in_clone:
            P.interrupt(tid)   # the stop that follows is an interrupt, once clone() has returned
            P.cont(tid)
            self._set_state(t, RUNNING)
            t.interrupted = True
            self._pump_until(lambda: t.state == STOPPED or tid not in self.tracees, deadline, "stop")
            if tid not in self.tracees:
                raise ThreadGone(tid)

    def forget_view(self, tid: int) -> None:
        """Its registers were changed: the view read at its stop is stale."""
        t = self.tracees.get(tid)
        if t is not None:
            t.view, t.raw_regs = None, b""

    def view(self, tid: int):
        """thread_view of a held, stopped thread (read now if its stop predates the reader)."""
        t = self.tracees.get(tid)
        if t is None or t.state != STOPPED:
            return None
        if t.view is None:
            self._read_view(t)
        return t.view

    # -- single-stepping (remote system calls) ---------------------------
    @contextlib.contextmanager
    def stepping(self, tid: int):
        """Route the events of a stopped thread to single_step() instead of the stop logic."""
        t = self.tracees[tid]
        t.stepping = True
        try:
            yield
        finally:
            t.stepping = False
            t.events.clear()

    def single_step(self, tid: int, deadline: float) -> int | None:
        """Step a stopped thread over one instruction: its next raw wait status, None if it exited."""
        t = self.tracees[tid]
        P.singlestep(tid)
        self._pump_until(lambda: t.events or t.tid not in self.tracees, deadline, "single-step")
        return t.events.pop(0) if t.events else None

    def syscall_stop(self, tid: int, deadline: float) -> int | None:
        """Resume a stepping thread to its next system-call entry or exit, or any other stop first:
        its raw wait status, None if it exited."""
        t = self.tracees[tid]
        P.syscall(tid)
        self._pump_until(lambda: t.events or t.tid not in self.tracees, deadline, "make a system call")
        return t.events.pop(0) if t.events else None

    def interrupt_stop(self, tid: int, deadline: float, interrupt: bool = True) -> int:
        """Interrupt a stepping thread and resume it: it stops before it runs an instruction (an
        interrupt stop, or the delivery of a signal that was pending: without `interrupt`, one
        must be). The raw wait status."""
        t = self.tracees[tid]
        if interrupt:
            P.interrupt(tid)
        P.cont(tid)
        self._pump_until(lambda: t.events or t.tid not in self.tracees, deadline, "stop")
        if not t.events:
            raise ThreadGone(tid)
        return t.events.pop(0)

    def wait_stepping(self, tid: int, until: float) -> int | None:
        """The next raw wait status of a stepping thread that runs, or None if none came by `until`."""
        t = self.tracees[tid]
        try:
            self._pump_until(lambda: t.events or t.tid not in self.tracees, until, "return")
        except TraceError:
            pass   # `until` passed: not an error here
        if tid not in self.tracees:
            raise ThreadGone(tid)
        return t.events.pop(0) if t.events else None

    def interrupt_running(self, tid: int, deadline: float) -> int:
        """Interrupt a stepping thread that runs: its next raw wait status (the interrupt, or a signal first)."""
        t = self.tracees[tid]
        P.interrupt(tid)
        self._pump_until(lambda: t.events or t.tid not in self.tracees, deadline, "stop")
        if not t.events:
            raise ThreadGone(tid)
        return t.events.pop(0)

    def run_stepping(self, tid: int, deadline: float, sig: int = 0) -> int | None:
        """Let a stepping thread run (with `sig`, or none) until its next stop: its raw wait status,
        None if it exited or the deadline passed (then it is interrupted and stopped again first)."""
        t = self.tracees[tid]
        P.cont(tid, sig)
        try:
            self._pump_until(lambda: t.events or t.tid not in self.tracees, deadline, "return")
        except TraceError:
            if t.tid not in self.tracees:
                return None
            P.interrupt(tid)
            self._pump_until(lambda: t.events or t.tid not in self.tracees,
                             time.monotonic() + self.stop_timeout, "stop")
            t.events.clear()
            return None
        return t.events.pop(0) if t.events else None

    def deliver_signal(self, tid: int, sig: int) -> None:
        """Let a stepping thread take `sig` (on registers the caller restored), then stop it again."""
        t = self.tracees[tid]
        t.stepping = False
        self.signals_passed += 1
        P.cont(tid, sig)
        self._set_state(t, RUNNING)
        t.interrupted = False
        self.stop_thread(tid)
        t.stepping = True

    def back_to_group_stop(self, tid: int, deadline: float) -> None:
        """Leave a stepping thread of a SIGSTOPped process in group-stop again.

        After a single-step its last stop is a SIGTRAP trap, and PTRACE_LISTEN
        (which keeps it stopped) only follows an event-stop. An interrupt taken
        while the group is stopped reports as that group-stop.
        """
        t = self.tracees[tid]
        P.interrupt(tid)
        P.cont(tid)
        while True:
            self._pump_until(lambda: t.events or t.tid not in self.tracees, deadline, "stop")
            if not t.events:
                raise ThreadGone(tid)
            status = t.events.pop(0)
            if status >> 16 == P.PTRACE_EVENT_STOP:
                t.group_stop = os.WSTOPSIG(status) in P.STOP_SIGNALS
                return
            P.cont(tid, os.WSTOPSIG(status))   # a signal on the way: the kernel delivers it

    # -- state --------------------------------------------------------
    def _add(self, tid: int) -> Tracee:
        t = self.tracees[tid] = Tracee(tid, hold=self.hold_new)
        self.running.add(tid)
        return t

    def _drop(self, tid: int) -> None:
        self.tracees.pop(tid, None)
        self.running.discard(tid)

    def _set_state(self, t: Tracee, state: str) -> None:
        t.state = state
        if state == STOPPED:
            self.running.discard(t.tid)
        else:
            t.view = None
            if t.tid in self.tracees:
                self.running.add(t.tid)

    def _read_view(self, t: Tracee) -> None:
        if self._regs is None or self._thread_view is None:
            return
        try:
            regs = self._regs.read(t.tid)
            t.view = self._thread_view(regs)
            if self.keep_registers:
                t.raw_regs = bytes(regs)
        except ThreadGone:
            self._drop(t.tid)
            return
        if t.step_from is not None and t.view[0][0] != t.step_from:
            t.step_from = None   # it moved: the step was taken, its breakpoints are on again

    def _pc(self, t: Tracee) -> int | None:
        if self._regs is None or self._thread_view is None:
            return None
        try:
            return self._thread_view(self._regs.read(t.tid))[0][0]
        except ThreadGone:
            return None

    def _finish_steps_over(self) -> None:
        """Before detach (which cancels a single step): every thread that hit a perf breakpoint takes
        the kernel's step over it. A single-step that completes is not reported (the kernel consumes
        it), so the thread is stopped again and looked at until it has moved."""
        for t in [t for t in self.tracees.values() if t.step_from is not None]:
            deadline = time.monotonic() + min(self.stop_timeout, 1.0)
            pause = 0.0005
            while t.step_from is not None and t.tid in self.tracees and time.monotonic() < deadline:
                t.hold = True
                if t.state == STOPPED:
                    self._resume(t)
                time.sleep(pause)   # an interrupt seen before it returns to user space stops it unmoved
                pause = min(pause * 2, 0.05)
                if t.state != STOPPED and not t.interrupted:
                    self._interrupt(t)
                try:
                    self._pump_until(lambda: t.state == STOPPED or t.tid not in self.tracees, deadline, "stop")
                except TraceError:
                    break   # it cannot stop again (frozen): detach it as it is

    # -- events ---------------------------------------------------------
    def _interrupt(self, t: Tracee) -> None:
        try:
            P.interrupt(t.tid)
            t.interrupted = True
        except ThreadGone:
            self._drop(t.tid)

    def _resume(self, t: Tracee) -> None:
        try:
            if t.group_stop:
                P.listen(t.tid)
            elif t.step_from is not None:
                P.singlestep(t.tid)   # the kernel completes its step over our breakpoint, then it runs on
            else:
                P.cont(t.tid)
            self._set_state(t, RUNNING)
            t.interrupted = False
        except ThreadGone:
            self._drop(t.tid)

    def _pump_until(self, done, deadline: float, what: str) -> None:
        while not done():
            events = self.waiter.wait(deadline, self.running)
            for tid, status in events:
                self._on_event(tid, status)
            if self.gone:
                raise ProcessGone(f"process {self.pid} exited")
            if not events and time.monotonic() >= deadline:
                stuck = [t.tid for t in self.tracees.values() if t.state != STOPPED]
                raise TraceError(
                    f"thread(s) {stuck[:5]} of process {self.pid} did not {what} within "
                    f"{self.stop_timeout:g} s", "is the process frozen (cgroup freezer) or in "
                    "uninterruptible sleep (state D)?")

    def _on_event(self, tid: int, status: int) -> None:
        t = self.tracees.get(tid)
        if status >> 8 == _INTERRUPT_STOP and t is not None and not t.stepping:
            t.group_stop = False   # the commit stop's common case, first
            self._stopped(t)
            return
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._drop(tid)
            if tid == self.pid:
                self.gone = True
            return
        if not os.WIFSTOPPED(status):
            return
        if t is None:
            # A clone child auto-attached by PTRACE_O_TRACECLONE may report
            # before its parent's clone event does.
            t = self._add(tid)
        if t.stepping:
            t.events.append(status)
            return
        sig, event = os.WSTOPSIG(status), status >> 16
        if event == P.PTRACE_EVENT_STOP:
            t.group_stop = sig in P.STOP_SIGNALS
            self._stopped(t)
        elif event == P.PTRACE_EVENT_CLONE:
            try:
                child = P.get_event_msg(tid)
                if child not in self.tracees:
                    self._add(child)
            except ThreadGone:
                pass
            self._stopped(t, in_clone=True)
        elif event or sig == signal.SIGTRAP | 0x80:   # a system-call stop left by an abandoned remote call
            self._stopped(t)
        else:
            ours = sig == signal.SIGTRAP and self._our_trap(t)
            if ours == "caught":
                # Our breakpoint: the thread stays stopped there, the trap is never delivered.
                t.caught = True
                t.hold = True
                self._stopped(t)
                return
            # Signal-delivery-stop: hand the signal back to the kernel now (a late trap of ours: none).
            if not ours:
                self.signals_passed += 1
            try:
                if t.step_from is not None:   # the kernel's step over our breakpoint is due (perfbp.py)
                    P.singlestep(tid, 0 if ours else sig)
                else:
                    P.cont(tid, 0 if ours else sig)
            except ThreadGone:
                self._drop(tid)
                return
            self._set_state(t, RUNNING)
            t.interrupted = False
            if t.hold:
                self._interrupt(t)

    def _our_trap(self, t: Tracee) -> str | None:
        """For a SIGTRAP: "caught" if it is this thread's armed breakpoint, "late" for one of ours
        disarmed since, None if it is not ours (the program's own, to be delivered)."""
        if self.cookies:
            try:
                cookie = perfbp.perf_trap_cookie(P.get_siginfo(t.tid))
            except ThreadGone:
                return None
            if cookie in self.cookies:
                if perfbp.STEPS_OVER:
                    t.step_from = self._pc(t)
                return "caught" if t.watch is not None and cookie == t.cookie else "late"
        if t.watch is not None and t.catch_fd is None and self._at_watch(t):
            return "caught"
        return None

    def _at_watch(self, t: Tracee) -> bool:
        """A debug-register breakpoint's trap: rip (pc) on its address."""
        return self._pc(t) == t.watch

    # -- catching a thread as it leaves a function ------------------------
    def catch(self, tid: int, address: int, writes) -> None:
        """Arm an execution breakpoint at `address` in (stopped) thread `tid` only.

        A perf event when the kernel allows it (dies with hotpatch), else the
        thread's debug registers `writes` (these outlive a killed tracer).
        """
        t = self.tracees[tid]
        cookie = COOKIE_TAG | (len(self.cookies) + 1)
        fd = perfbp.open_breakpoint(tid, address, cookie)
        if fd is None:
            P.apply_writes(tid, writes)
        else:
            self.cookies.add(cookie)
        t.watch, t.caught, t.catch_fd, t.cookie = address, False, fd, cookie

    def release_catch(self, tid: int, writes) -> None:
        """Disarm it (the thread must be stopped): never left armed, it would trap with no tracer."""
        t = self.tracees.get(tid)
        if t is None or t.watch is None:
            return
        caught, fd = t.caught, t.catch_fd
        t.watch, t.caught, t.catch_fd = None, False, None
        try:
            if fd is not None:
                perfbp.close_breakpoint(fd)
                if not caught:
                    self._take_late_trap(t)
            else:
                P.apply_writes(tid, writes)
        except ThreadGone:
            self._drop(tid)

    def _take_late_trap(self, t: Tracee) -> None:
        """A hit just before the thread stopped leaves its SIGTRAP pending (the kernel queues it on the
        way out of the trap, before any ptrace stop): let the thread take it here, where it is swallowed,
        never after detach, where it would kill the process."""
        if not P.deliverable_signals(self.pid, t.tid) & SIGTRAP_BIT:
            return
        self._resume(t)   # it stops at once for the SIGTRAP; _on_event swallows it and interrupts it
        self._pump_until(lambda: t.state == STOPPED or t.tid not in self.tracees,
                         time.monotonic() + self.stop_timeout, "stop")

    def wait_caught(self, tid: int, deadline: float) -> bool:
        """Let everything run until thread `tid` hits its breakpoint (True) or the deadline (False)."""
        t = self.tracees[tid]
        try:
            self._pump_until(lambda: t.caught or tid not in self.tracees, deadline, "return")
        except ProcessGone:
            raise
        except TraceError:
            return False   # the deadline: not an error here
        return t.caught

    def _stopped(self, t: Tracee, in_clone: bool = False) -> None:
        t.interrupted = False
        t.in_clone = in_clone
        self._set_state(t, STOPPED)
        if not t.hold:
            self._resume(t)
        else:
            self._read_view(t)
