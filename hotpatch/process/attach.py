"""The live process: attach() is the one door, Process what it opens onto.

Attaching is an explicit step (every thread seized, memory opened); the
constructor only stores. Callers stop, inspect, change and release the
process through Process's methods, never through its parts.
"""

import contextlib
import ctypes
import os

from hotpatch.arch import arch_for_machine
from hotpatch.arch.base import Arch
from hotpatch.elf.image import ElfImage
from hotpatch.errors import ELFFormatError, ProcessGone, ThreadGone, TraceError
from hotpatch.process import inflight, parking
from hotpatch.process import ptrace as P
from hotpatch.process.cgroup import freezer_state
from hotpatch.process.maps import MapIndex, Mapping, read_maps
from hotpatch.process.memory import Memory
from hotpatch.process.remote import RemoteSyscalls, find_parking, find_syscall_gadget
from hotpatch.process.seccomp import fetch_filters
from hotpatch.process.threads import STOPPED, ThreadGroup, running_threads, thread_name
from hotpatch.safety.activeness import Snapshot

MAX_STACK_SCAN = 16 << 20


def check_pid(pid: int) -> dict[str, str]:
    """Refuse what cannot be patched (no such process, a thread, a zombie, a kernel thread, frozen); the
    process's /proc status fields, as read for that."""
    if pid <= 0:
        raise ProcessGone(f"{pid} is not a process id")
    status = P.status_fields(pid)
    if status is None:
        raise ProcessGone(f"process {pid} does not exist")
    if status.get("Tgid") != str(pid):
        raise ProcessGone(f"{pid} is a thread, not a process", f"use its process id {status.get('Tgid')}")
    if pid == os.getpid():
        raise TraceError("hotpatch cannot patch itself")
    state = status.get("State", "")
    if state.startswith("Z"):
        alive = [t for t in _tasks(pid) if not (P.status_field(t, "State") or "Z").startswith(("Z", "X"))]
        if alive:
            raise TraceError(f"the main thread of process {pid} has exited (its other threads run on)",
                             "hotpatch cannot patch such a process; restart it to apply the fix")
        raise ProcessGone(f"process {pid} is a zombie: it has exited and waits for its parent")
    if "VmSize" not in status:
        raise TraceError(f"{pid} is a kernel thread, not a user process", "give the process id of a program")
    frozen = freezer_state(pid)
    if frozen is not None:
        directory, how = frozen
        raise TraceError(f"process {pid} is {how} by the cgroup v2 freezer ({directory}); nothing was done",
                         f"thaw it (echo 0 > {directory}/cgroup.freeze) and retry")
    return status


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def check_seccomp_strict(pid: int, status: dict[str, str] | None = None) -> None:
    """Strict mode forbids everything; a filter is judged once seized (live/sandbox.py). `status`: the
    process's /proc status, read just before."""
    if (status.get("Seccomp") if status is not None else P.status_field(pid, "Seccomp")) == "1":
        raise TraceError(f"process {pid} runs in seccomp strict mode, which forbids mmap",
                         "it cannot be patched live")


def process_arch(pid: int) -> Arch:
    try:
        return arch_for_machine(ElfImage.from_path(f"/proc/{pid}/exe").ehdr.e_machine)
    except FileNotFoundError as e:
        raise ProcessGone(f"process {pid} exited") from e
    except PermissionError as e:
        raise TraceError(f"cannot read /proc/{pid}/exe: permission denied", P.permission_remedy(pid)) from e
    except (ELFFormatError, OSError) as e:
        raise TraceError(f"cannot read the executable of process {pid}: {e}") from e


def attach(pid: int, arch: Arch, abort_check=None) -> "Process":
    """Seize every thread of `pid` (none is stopped) and open its memory.

    abort_check() raises to abandon a wait on the kernel (a termination
    request); waits marked uninterruptible() ignore it.
    """
    check_seccomp_strict(pid, check_pid(pid))
    waiter = P.Waiter(abort_check)
    threads = ThreadGroup(pid, waiter, arch.regs_type, arch.thread_view)
    proc = Process(pid, arch, waiter, threads)
    try:
        threads.seize_all()
        proc.mem = Memory(pid)
    except BaseException:
        proc.close()
        raise
    return proc


class Process:
    """A process with every thread seized; close() detaches whatever happened."""

    def __init__(self, pid: int, arch: Arch, waiter: P.Waiter, threads: ThreadGroup):
        self.pid, self.arch = pid, arch
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.waiter = waiter
        self.threads = threads
        self.mem: Memory | None = None
        self._remote: RemoteSyscalls | None = None
        self._mark: str | None = None
        self._stacks = bytearray()   # reused stack buffer (see prepare_snapshot)
        self._last_sps: list[int] = []

    def uninterruptible(self):
        """Waits inside are never abandoned: an undo in progress."""
        return self.waiter.uninterruptible()

    # -- what it is -----------------------------------------------------
    def alive(self) -> bool:
        return P.status_field(self.pid, "State") not in (None, "Z (zombie)", "X (dead)")

    def maps(self) -> list[Mapping]:
        return read_maps(self.pid)

    def thread_name(self, tid: int) -> str:
        return thread_name(self.pid, tid)

    @property
    def signals_passed(self) -> int:
        return self.threads.signals_passed

    # -- stopping and resuming ------------------------------------------
    def running_threads(self) -> set[int]:
        """Threads the kernel shows running or runnable now: stop_all interrupts them last."""
        return running_threads(self.pid, self.threads.tracees)

    def stop_all(self, running: set[int] | None = None) -> None:
        """Every thread in a ptrace-stop, those in `running` (read just before) interrupted last."""
        self.threads.stop_all(running_hint=self.running_threads() if running is None else running)

    def resume_all(self) -> None:
        self.threads.resume_all()

    # -- catching a thread as it leaves a function ------------------------
    def catch(self, tid: int, address: int) -> bool:
        """Arm a hardware breakpoint at `address` in stopped thread `tid` only; False if it cannot be."""
        try:
            self.threads.catch(tid, address, self.arch.breakpoint_writes(address))
            return True
        except (TraceError, KeyError):
            return False

    def release_catch(self, tid: int) -> None:
        """Disarm it; the thread must be stopped (it is, in every stop, and when caught)."""
        self.threads.release_catch(tid, self.arch.clear_writes())

    def wait_caught(self, tid: int, deadline: float) -> bool:
        """The process runs until `tid` reaches its breakpoint (held there, True) or the deadline."""
        return self.threads.wait_caught(tid, deadline)

    def thread_ids(self) -> list[int]:
        return list(self.threads.tracees)

    def stop_thread(self, tid: int) -> bool:
        """Stop one thread (the others keep running); False if it is gone or held in group-stop."""
        t = self.threads.tracees.get(tid)
        if t is None or t.group_stop:
            return False
        try:
            self.threads.stop_thread(tid)
        except ThreadGone:
            return False
        return tid in self.threads.tracees

    def resume_thread(self, tid: int) -> None:
        self.threads.resume_thread(tid)

    def detach_all(self, keep: int | None = None) -> None:
        """Release every thread; `keep` stays stopped and traced (work left for one thread)."""
        self.threads.detach_all(keep=keep)

    def close(self) -> None:
        try:
            if self.threads.tracees:
                with self.waiter.uninterruptible():
                    self.threads.detach_all()
        finally:
            if self.mem:
                self.mem.close()
            self.waiter.close()
            if self._mark is not None and not self.remote_left_parked():
                inflight.forget([self._mark])   # every borrowed thread has its own registers back

    # -- the activeness snapshot ----------------------------------------
    def prepare_snapshot(self, per_thread: int = 8192) -> None:
        """Allocate (and fault in) the stack buffer while the process still runs.

        Sized from the last snapshot, else `per_thread` bytes a thread; a
        larger need at the stop only costs a fresh allocation then.
        """
        want = max(len(self._stacks), per_thread * len(self.threads.tracees), 1 << 16)
        if len(self._stacks) < want:
            self._stacks = bytearray(want)   # zero-filled: every page touched now

    def snapshot(self, maps: MapIndex, only: int | None = None) -> Snapshot:
        """Code pointers and live stack of every (stopped) thread.

        Registers were read as each thread's stop arrived (overlapping the
        kernel still stopping the others); stacks are read all at once
        (process_vm_readv). `maps` may predate the stop: a stack it does not
        know makes it re-read.
        """
        tids, pointers, ranges = [], [], []
        view, find = self.threads.view, maps.find
        threads = self.threads.tracees.values() if only is None else [self.threads.tracees[only]]
        for t in threads:
            if t.state != STOPPED:
                continue
            tid, got = t.tid, t.view or view(t.tid)   # read as its stop arrived, else now
            if got is None:
                continue
            ptrs, sp, frames_end = got
            m = find(sp)
            if m is None:
                maps.refresh(self.maps())
                m = maps.find(sp)
            end = min(m.end, sp + MAX_STACK_SCAN, frames_end) if m else sp
            tids.append(tid)
            pointers.append(ptrs)
            ranges.append((sp, (end - sp) & ~7))   # whole words: see Snapshot
        self._stacks, starts = self.mem.read_joined(ranges, self._stacks)
        self._last_sps = [sp for sp, _ in ranges]
        return Snapshot(tids, pointers, self._stacks, starts, sum(size for _, size in ranges), self._last_sps)

    def registers(self, tid: int):
        """The registers of a stopped thread (the architecture's NT_PRSTATUS struct), None if it is gone."""
        raw = self.raw_registers(tid)
        return self.arch.regs_type.from_buffer_copy(raw) if raw else None

    def raw_registers(self, tid: int) -> bytes:
        """The same as bytes: kept from its stop when keep_registers() was asked, else read now; b"" if gone."""
        t = self.threads.tracees.get(tid)
        if t is not None and t.raw_regs and t.view is not None:
            return t.raw_regs
        try:
            return bytes(P.get_regs(tid, self.arch.regs_type))
        except P.ThreadGone:
            return b""

    def keep_registers(self) -> None:
        """From now on each thread's registers are kept as its stop arrives (the stacks check compares them)."""
        self.threads.keep_registers = True

    def stack_mappings(self) -> set[int]:
        """Start addresses of the mappings that held a thread's stack pointer at the last snapshot.

        Read after the threads run again: a thread's stack mapping stays where it is.
        """
        index = MapIndex(self.maps())
        return {m.start for m in map(index.find, self._last_sps) if m is not None}

    # -- system calls made in the process ---------------------------------
    def remote(self, maps: list[Mapping] | None = None) -> RemoteSyscalls:
        """Remote calls set up: the system call instruction found in `maps` (read just before: the vdso and
        libc it is looked for in stay where they are) or in the maps read now."""
        if self._remote is None:
            self._mark = inflight.make(self.pid)   # before any thread is borrowed: see inflight.py
            maps = maps if maps is not None else self.maps()
            gadget = find_syscall_gadget(self.arch, maps, self.mem)
            self._remote = RemoteSyscalls(self.arch, self.threads, gadget, self.mem,
                                          find_parking(self.arch, maps, self.mem))
        return self._remote

    def remote_left_parked(self) -> set[tuple[int, bool]]:
        """Threads whose registers a remote call could not restore: (thread, parked in a loop)."""
        return self._remote.left_parked if self._remote is not None else set()

    def syscall_thread(self) -> int:
        """The thread remote system calls run on: the leader, whose seccomp filter is checked."""
        tracees = self.threads.tracees
        if self.pid in tracees:
            return self.pid
        if not tracees:
            raise ProcessGone(f"no thread of process {self.pid} is left to make a system call")
        return next(iter(tracees))

    @contextlib.contextmanager
    def syscall_thread_held(self):
        """Several remote system calls in a row: the thread they run on stopped once for all of them,
        not stopped and resumed around each, and kept in the system call gadget from one to the next
        (RemoteSyscalls.held): each of those is a round trip through the kernel and the scheduler."""
        remote = self.remote()
        tid = self.syscall_thread()
        if tid in self.threads.stopped_tids(usable_only=False):
            with remote.held(tid):
                yield
            return
        self.threads.stop_thread(tid)
        try:
            with remote.held(tid):
                yield
        finally:
            self.threads.resume_thread(tid)

    def syscall(self, name: str, *args: int, mark=None) -> int:
        """One remote syscall on a stopped thread (stopping one if none is), checked; see
        RemoteSyscalls.call for `mark`."""
        remote = self.remote()
        tid = self.syscall_thread()
        if tid in self.threads.stopped_tids(usable_only=False):
            return remote.checked(tid, name, *args, mark=mark)
        self.threads.stop_thread(tid)
        try:
            return remote.checked(tid, name, *args, mark=mark)
        finally:
            self.threads.resume_thread(tid)

    def call(self, address: int, args: list[int], trap: int, timeout: float, tid: int | None = None,
             tag: int = 0, mark=None) -> int:
        """Run the function at `address` on a stopped thread (frame registration only: see live/ehframe.py);
        see RemoteSyscalls.function for `tag` and `mark`."""
        tid = self.syscall_thread() if tid is None else tid
        if tid in self.threads.stopped_tids(usable_only=False):
            return self.remote().function(tid, address, args, trap, timeout, tag, mark)
        self.threads.stop_thread(tid)
        try:
            return self.remote().function(tid, address, args, trap, timeout, tag, mark)
        finally:
            self.threads.resume_thread(tid)

    # -- threads parked by a run that died ----------------------------------
    def parked(self, tid: int) -> tuple[parking.Journal, int] | None:
        """(journal, result of its system call) if stopped thread `tid` spins in a parking loop with
        a journal of its own; None otherwise."""
        regs = P.get_regs(tid, self.arch.regs_type)
        size = ctypes.sizeof(regs)
        data = self.mem.read_available(self.arch.parked_journal(regs), parking.size(size))
        journal = parking.decode(data, size)
        if journal is None or journal.tid != tid or journal.park != self.arch.pc(regs):
            return None
        return journal, self.arch.syscall_result(regs)

    def unpark(self, tid: int, journal: parking.Journal) -> None:
        """Thread `tid` (stopped) back on the registers its journal saved."""
        P.set_regs(tid, self.arch.regs_type.from_buffer_copy(journal.registers))
        self.threads.forget_view(tid)

    def seccomp_filters(self) -> tuple[list, int]:
        """(the filters of the system-call thread, the gadget its calls go through); [] if unfiltered."""
        if P.status_field(self.pid, "Seccomp") != "2":
            return [], 0
        tid = self.syscall_thread()
        self.threads.stop_thread(tid)
        try:
            return fetch_filters(tid), self.remote().call_site
        finally:
            self.threads.resume_thread(tid)
