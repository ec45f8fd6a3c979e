"""A traced process and everything needed to change it, released in one place."""

import os

from hotpatch.arch import get_arch
from hotpatch.arch.base import Arch
from hotpatch.elf import ELFFormatError
from hotpatch.elf.image import ElfImage
from hotpatch.errors import TargetGone, TraceError
from hotpatch.safety.activeness import Snapshot
from hotpatch.steps import check_interrupted
from hotpatch.target import ptrace as P
from hotpatch.target.maps import MapIndex, Mapping, read_maps
from hotpatch.target.memory import Memory
from hotpatch.target.remote import RemoteSyscalls, find_syscall_gadget
from hotpatch.target.threads import ThreadGroup

MAX_STACK_SCAN = 16 << 20


def check_pid(pid: int) -> None:
    if pid <= 0:
        raise TargetGone(f"{pid} is not a process id")
    if not os.path.exists(f"/proc/{pid}"):
        raise TargetGone(f"process {pid} does not exist")
    if P.status_field(pid, "Tgid") != str(pid):
        raise TargetGone(f"{pid} is a thread, not a process", f"use its process id {P.status_field(pid, 'Tgid')}")
    if pid == os.getpid():
        raise TraceError("hotpatch cannot patch itself")


def check_seccomp(pid: int) -> None:
    """Strict mode forbids everything; a filter is judged once seized (Session)."""
    mode = P.status_field(pid, "Seccomp")
    if mode == "1":
        raise TraceError(f"process {pid} runs in seccomp strict mode, which forbids mmap",
                         "it cannot be patched live")


def process_arch(pid: int) -> Arch:
    try:
        return get_arch(ElfImage.from_path(f"/proc/{pid}/exe").ehdr.machine)
    except FileNotFoundError as e:
        raise TargetGone(f"process {pid} exited") from e
    except PermissionError as e:
        raise TraceError(f"cannot read /proc/{pid}/exe: permission denied", P.permission_remedy(pid)) from e
    except (ELFFormatError, OSError) as e:
        raise TraceError(f"cannot read the executable of process {pid}: {e}") from e


class Session:
    """Every thread seized, memory open; close() detaches whatever happened."""

    def __init__(self, pid: int, arch: Arch):
        check_pid(pid)
        check_seccomp(pid)
        self.pid, self.arch = pid, arch
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.waiter = P.Waiter(abort_check=check_interrupted)
        self.group = ThreadGroup(pid, self.waiter)
        self.mem = None
        self._remote = None
        self._regs_reader = P.RegsReader(arch.regs_type)
        self._regs_at_stop: dict[int, tuple] = {}
        self._stacks = bytearray()   # reused stack buffer (see prepare_snapshot)
        self.group.on_stop = self._read_regs
        self.group.on_resume = lambda tid: self._regs_at_stop.pop(tid, None)
        self.name_vmas = True
        try:
            self.group.seize_all()
            self.mem = Memory(pid)
            if P.status_field(pid, "Seccomp") == "2":
                self._check_seccomp_filter()
        except BaseException:
            self.close()
            raise

    def _check_seccomp_filter(self) -> None:
        """Refuse, before anything is written, a filter that forbids a system call we will make.

        The calls are judged with their real arguments on the thread that will
        make them (the leader: filters are per thread).
        """
        from hotpatch.safety.seccomp import SECCOMP_RET_ACTION_FULL, SECCOMP_RET_ERRNO, first_forbidden
        from hotpatch.target.remote import (MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PR_SET_VMA,
                                            PR_SET_VMA_ANON_NAME, PROT_EXEC, PROT_READ, PROT_WRITE)
        from hotpatch.target.seccomp import AUDIT_ARCH, SYSCALL_INSN_SIZE, check_remote_syscalls, fetch_filters
        nr = self.arch.syscall_numbers
        anon = MAP_PRIVATE | MAP_ANONYMOUS
        page = self.page_size
        needed = [("mmap", nr["mmap"], [0, page, PROT_READ | PROT_EXEC, anon | MAP_FIXED_NOREPLACE, (1 << 64) - 1, 0]),
                  ("mmap", nr["mmap"], [0, page, PROT_READ | PROT_EXEC, anon, (1 << 64) - 1, 0]),
                  ("mprotect", nr["mprotect"], [0, page, PROT_READ]),
                  ("mprotect", nr["mprotect"], [0, page, PROT_READ | PROT_WRITE]),
                  ("munmap", nr["munmap"], [0, page])]
        self.group.stop_thread(self.pid)
        try:
            filters = fetch_filters(self.pid)
            gadget = self.remote().gadget
            check_remote_syscalls(self.pid, self.arch.name, needed, gadget, filters)
            # Naming the image's mappings is optional: an ERRNO answer only means we
            # skip it; anything harsher (kill, trap) is refused like a needed call.
            name_call = [("prctl", nr["prctl"], [PR_SET_VMA, PR_SET_VMA_ANON_NAME, 0, page, 0])]
            verdict = first_forbidden(filters, AUDIT_ARCH[self.arch.name],
                                      gadget + SYSCALL_INSN_SIZE[self.arch.name], name_call) if filters else None
            if verdict is not None:
                if verdict[1] & SECCOMP_RET_ACTION_FULL != SECCOMP_RET_ERRNO:
                    check_remote_syscalls(self.pid, self.arch.name, name_call, gadget, filters)
                self.name_vmas = False
        finally:
            self.group.resume_thread(self.pid)

    def alive(self) -> bool:
        return P.status_field(self.pid, "State") not in (None, "Z (zombie)", "X (dead)")

    def close(self) -> None:
        try:
            if self.group.tracees:
                with self.waiter.uninterruptible():
                    self.group.detach_all()
        finally:
            if self.mem:
                self.mem.close()
            self.waiter.close()

    def maps(self) -> list[Mapping]:
        return read_maps(self.pid)

    def remote(self) -> RemoteSyscalls:
        if self._remote is None:
            gadget = find_syscall_gadget(self.arch, self.maps(), self.mem)
            self._remote = RemoteSyscalls(self.arch, self.group, gadget)
        return self._remote

    def syscall_thread(self) -> int:
        """The thread remote system calls run on: the leader, whose seccomp filter was checked."""
        if self.pid in self.group.tracees:
            return self.pid
        if not self.group.tracees:
            raise TargetGone(f"no thread of process {self.pid} is left to make a system call")
        return next(iter(self.group.tracees))

    def syscall(self, name: str, *args: int) -> int:
        """One remote syscall on a stopped thread (stopping one if none is), checked."""
        remote = self.remote()
        tid = self.syscall_thread()
        if tid in self.group.stopped_tids(usable_only=False):
            return remote.checked(tid, name, *args)
        self.group.stop_thread(tid)
        try:
            return remote.checked(tid, name, *args)
        finally:
            self.group.resume_thread(tid)

    def snapshot_threads(self, maps: MapIndex) -> Snapshot:
        """Code pointers and live stack of every (stopped) thread.

        Registers come from `_regs_at_stop`, read as each thread's stop
        arrived (overlapping the kernel still stopping the others); stacks are
        read all at once (process_vm_readv). `maps` may predate the stop: a
        stack it does not know makes it re-read.
        """
        tids, pointers, ranges = [], [], []
        regs_at_stop, find = self._regs_at_stop, maps.find
        for tid in self.group.stopped_tids(usable_only=False):
            got = regs_at_stop.get(tid) or self._read_regs(tid)
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
        return Snapshot(tids, pointers, self._stacks, starts, sum(size for _, size in ranges))

    def prepare_snapshot(self, per_thread: int = 8192) -> None:
        """Allocate (and fault in) the stack buffer while the target still runs.

        Sized from the last snapshot, else `per_thread` bytes a thread; a
        larger need at the stop only costs a fresh allocation then.
        """
        want = max(len(self._stacks), per_thread * len(self.group.tracees), 1 << 16)
        if len(self._stacks) < want:
            self._stacks = bytearray(want)   # zero-filled: every page touched now

    def _read_regs(self, tid: int):
        """((pc, code pointers), sp, end of frames) of a stopped thread, or None if it is gone."""
        try:
            regs = self._regs_reader.read(tid)
        except P.ThreadGoneError:
            return None
        got = self._regs_at_stop[tid] = self.arch.thread_view(regs)
        return got
