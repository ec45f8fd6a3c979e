"""A traced process and everything needed to change it, released in one place."""

import os
import signal

from hotpatch.arch import get_arch
from hotpatch.arch.base import Arch
from hotpatch.elf import ELFFormatError
from hotpatch.elf.image import ElfImage
from hotpatch.errors import TargetGone, TraceError
from hotpatch.safety.activeness import ThreadSnapshot
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
    mode = P.status_field(pid, "Seccomp")
    if mode == "1":
        raise TraceError(f"process {pid} runs in seccomp strict mode, which forbids mmap",
                         "it cannot be patched live")
    if mode == "2":
        raise TraceError(f"process {pid} runs under a seccomp filter; hotpatch cannot yet prove that "
                         "mmap, mprotect, munmap and prctl are allowed, and a forbidden call could kill it",
                         "restart it without the filter to patch it")


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
        self.waiter = P.Waiter()
        self.group = ThreadGroup(pid, self.waiter)
        self.mem = None
        self._remote = None
        try:
            self.group.seize_all()
            self.mem = Memory(pid)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            if self.group.tracees:
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

    def syscall(self, name: str, *args: int) -> int:
        """One remote syscall on a stopped thread (stopping one if none is), checked."""
        remote = self.remote()
        stopped = self.group.stopped_tids()
        if stopped:
            return remote.checked(stopped[0], name, *args)
        tid = self.pid if self.pid in self.group.tracees else next(iter(self.group.tracees))
        self.group.stop_thread(tid)
        try:
            return remote.checked(tid, name, *args)
        finally:
            self.group.resume_thread(tid)

    def snapshot_threads(self, maps: MapIndex) -> list[ThreadSnapshot]:
        """Registers and live stack of every (stopped) thread: one GETREGSET and one pread each.

        `maps` may predate the stop: a thread stack it does not know (a thread
        born since) makes it re-read /proc/PID/maps.
        """
        arch = self.arch
        reader = P.RegsReader(arch.regs_type)
        found = []
        for tid in self.group.stopped_tids(usable_only=False):
            try:
                regs = reader.read(tid)
            except P.ThreadGoneError:
                continue
            sp = arch.sp(regs)
            m = maps.find(sp)
            if m is None:
                maps.refresh(self.maps())
                m = maps.find(sp)
            end = min(m.end, sp + MAX_STACK_SCAN, arch.frames_end(regs, sp, m.end)) if m else sp
            found.append((tid, arch.pc(regs), tuple(arch.code_pointers(regs)), sp, end - sp))
        stacks = self.mem.read_many([(sp, size) for _, _, _, sp, size in found])
        return [ThreadSnapshot(tid, pc, ptrs, sp, stack)
                for (tid, pc, ptrs, sp, _), stack in zip(found, stacks)]


def install_termination_handlers():
    """SIGTERM and SIGHUP roll back like Ctrl-C: the transaction sees KeyboardInterrupt."""
    def handler(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
