"""System calls made by a target thread on our behalf.

The thread's pc is pointed at a syscall instruction that already exists in an
executable mapping (the vdso, or libc), the arguments are set, and it is
single-stepped over that one instruction. No code is written and no library
code runs in the target. Registers are restored exactly afterwards.
"""

import os
import signal
import time

from hotpatch.arch.base import Arch
from hotpatch.errors import TargetGone, TraceError
from hotpatch.target import ptrace as P
from hotpatch.target.maps import Mapping
from hotpatch.target.memory import Memory
from hotpatch.target.threads import ThreadGroup

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
PR_SET_VMA, PR_SET_VMA_ANON_NAME = 0x53564D41, 0
EEXIST = 17


class RemoteSyscallError(TraceError):
    def __init__(self, name: str, errno_: int):
        super().__init__(f"{name} in the target failed: {os.strerror(errno_)}")
        self.errno = errno_


def find_syscall_gadget(arch: Arch, maps: list[Mapping], mem: Memory) -> int:
    """An existing syscall instruction: vdso first (small, always there), then other code."""
    ordered = sorted((m for m in maps if m.executable and m.readable),
                     key=lambda m: (m.path != "[vdso]", "libc" not in m.path, m.start))
    for m in ordered:
        if m.path == "[vsyscall]":
            continue
        pos, chunk = m.start, 1 << 16
        while pos < m.end:
            data = mem.read_upto(pos, min(chunk, m.end - pos))
            if not data:
                break
            i = data.find(arch.syscall_insn)
            while i >= 0:
                if (pos + i) % arch.syscall_insn_align == 0:
                    return pos + i
                i = data.find(arch.syscall_insn, i + 1)
            pos += len(data) - len(arch.syscall_insn) + 1
    raise TraceError("no syscall instruction found in the target's code")


class RemoteSyscalls:
    def __init__(self, arch: Arch, group: ThreadGroup, gadget: int):
        self.arch, self.group, self.gadget = arch, group, gadget
        self.count = 0

    def call(self, tid: int, name: str, *args: int) -> int:
        """Run one syscall in stopped thread `tid`; returns its result (negative errno on failure).

        Never abandoned half-way: a thread left running with hijacked
        registers would crash the target.
        """
        with self.group.waiter.uninterruptible():
            return self._call(tid, name, *args)

    def _call(self, tid: int, name: str, *args: int) -> int:
        arch = self.arch
        t = self.group.tracees[tid]
        try:
            saved = P.get_regs(tid, arch.regs_type)
        except P.ThreadGoneError as e:
            raise TargetGone(f"thread {tid} exited before a remote {name}") from e
        args6 = (list(args) + [0] * 6)[:6]   # unused argument registers zeroed: what a seccomp filter sees
        hijacked = arch.hijack_for_syscall(saved, self.gadget, arch.syscall_numbers[name], args6)
        after = arch.after_syscall_insn(self.gadget)
        deadline = time.monotonic() + self.group.stop_timeout
        was_group_stop = t.group_stop
        t.stepping = True
        result = None
        try:
            while result is None:
                P.set_regs(tid, hijacked)
                P.singlestep(tid)
                status = self.group.wait_step(t, deadline)
                if status is None:
                    raise TargetGone(f"thread {tid} exited during a remote {name}")
                regs = P.get_regs(tid, arch.regs_type)
                executed = arch.pc(regs) == after
                sig, event = os.WSTOPSIG(status), status >> 16
                if executed:
                    result = arch.syscall_result(regs)
                if event or sig == signal.SIGTRAP:
                    continue
                # A real signal arrived: deliver it on the original registers,
                # never on hijacked ones, then take the thread back. It may
                # stop anywhere, inside the handler too: what it is now is
                # what must be restored, not what it was (restoring the old
                # registers would skip the handler's sigreturn and leave the
                # signal blocked for good).
                P.set_regs(tid, saved)
                t.stepping = False
                self.group.signals_passed += 1
                P.cont(tid, sig)
                self.group.mark_running(t)
                self.group.stop_thread(tid)
                t.stepping = True
                saved = P.get_regs(tid, arch.regs_type)
                hijacked = arch.hijack_for_syscall(saved, self.gadget, arch.syscall_numbers[name], args6)
            P.set_regs(tid, saved)
            if was_group_stop:
                self._back_to_group_stop(t, deadline)
        except P.ThreadGoneError as e:
            raise TargetGone(f"thread {tid} exited during a remote {name}") from e
        finally:
            t.stepping = False
            if tid in self.group.tracees:
                try:
                    P.set_regs(tid, saved)
                except P.ThreadGoneError:
                    pass
        self.count += 1
        return result

    def _back_to_group_stop(self, t, deadline: float) -> None:
        """Leave a thread of a SIGSTOPped process in group-stop again.

        After the single-step its last stop is a SIGTRAP trap, and
        PTRACE_LISTEN (which keeps it stopped) only follows an event-stop. An
        interrupt taken while the group is stopped reports as that group-stop.
        """
        P.interrupt(t.tid)
        P.cont(t.tid)
        while True:
            status = self.group.wait_step(t, deadline)
            if status is None:
                raise TargetGone(f"thread {t.tid} exited")
            if status >> 16 == P.PTRACE_EVENT_STOP:
                t.group_stop = os.WSTOPSIG(status) in P.STOP_SIGNALS
                return
            P.cont(t.tid, os.WSTOPSIG(status))   # a signal on the way: the kernel delivers it

    def checked(self, tid: int, name: str, *args: int) -> int:
        result = self.call(tid, name, *args)
        if -4095 <= result < 0:
            raise RemoteSyscallError(name, -result)
        return result
