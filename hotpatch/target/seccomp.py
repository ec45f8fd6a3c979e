"""The seccomp filters of a traced thread, read from the kernel, and the verdict on our syscalls.

PTRACE_SECCOMP_GET_FILTER hands back each classic-BPF program a thread runs
(index 0 = installed first). It needs CAP_SYS_ADMIN, a tracer not itself
under seccomp, a kernel with CONFIG_CHECKPOINT_RESTORE, and the tracee in a
ptrace-stop. Whatever cannot be read or interpreted is treated as forbidding:
hotpatch refuses rather than risk a SECCOMP_RET_KILL.
"""

import ctypes
import errno
import itertools
import os

from ptrace import PtraceError
from ptrace.binding.func import ptrace as _raw_ptrace

from hotpatch.errors import TargetGone, TraceError
from hotpatch.safety import seccomp as S
from hotpatch.target import ptrace as P

PTRACE_SECCOMP_GET_FILTER = 0x420C
EMEDIUMTYPE = getattr(errno, "EMEDIUMTYPE", 124)

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
SYSCALL_INSN_SIZE = {"x86_64": 2, "aarch64": 4}   # seccomp_data.instruction_pointer = gadget + this

NOTHING_CHANGED = "nothing was changed"


class SeccompForbidden(TraceError):
    """The filter of the thread hotpatch would use forbids one of its system calls."""


class SeccompUnverifiable(TraceError):
    """The thread runs under a filter hotpatch cannot read or interpret: it refuses."""


def _process_of(tid: int) -> str:
    tgid = P.status_field(tid, "Tgid")
    if tgid is None or tgid == str(tid):
        return f"process {tid}"
    return f"process {tgid} (thread {tid})"


def _unreadable(tid: int, err: int) -> SeccompUnverifiable:
    why, remedy = {
        errno.EACCES: ("reading it needs CAP_SYS_ADMIN and a hotpatch not itself under seccomp",
                       "run hotpatch as root outside any seccomp filter"),
        errno.EIO: ("this kernel cannot export filters (no CONFIG_CHECKPOINT_RESTORE)",
                    "restart the process without the filter to patch it"),
        EMEDIUMTYPE: ("the filter is not a classic BPF program",
                      "restart the process without the filter to patch it"),
        errno.EINVAL: ("the kernel reports no filter mode for it",
                       "retry; if it persists, restart the process without the filter"),
    }.get(err, (os.strerror(err), "restart the process without the filter to patch it"))
    return SeccompUnverifiable(f"{_process_of(tid)} runs under a seccomp filter hotpatch cannot verify: "
                               f"{why}", f"{NOTHING_CHANGED}; {remedy}")


def _get_filter(tid: int, index: int, buffer) -> int | None:
    """Instructions copied for filter `index`, or None past the last filter."""
    try:
        return _raw_ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, ctypes.addressof(buffer))
    except PtraceError as e:
        if e.errno == errno.ENOENT:
            return None
        if e.errno == errno.ESRCH:
            raise TargetGone(f"thread {tid} exited (or is not in a ptrace-stop)") from e
        raise _unreadable(tid, e.errno or 0) from e


def fetch_filters(tid: int) -> list[list[S.Instruction]]:
    """Every filter of a seized, ptrace-stopped thread, oldest first; [] when it has none.

    One request per filter: the buffer holds the largest program the kernel
    accepts (BPF_MAXINSNS), so no count is asked first and no filter added
    meanwhile (TSYNC from another thread) can overflow it.
    """
    mode = P.status_field(tid, "Seccomp")
    if mode is None:
        raise TargetGone(f"thread {tid} exited")
    if mode == "0":
        return []   # no request at all: no CAP_SYS_ADMIN needed for unfiltered targets
    if mode == "1":
        raise SeccompForbidden(f"{_process_of(tid)} runs in seccomp strict mode, which forbids mmap",
                               f"{NOTHING_CHANGED}; it cannot be patched live")
    buffer = ctypes.create_string_buffer(S.BPF_MAXINSNS * S.SOCK_FILTER.size)
    filters = []
    for index in itertools.count():
        count = _get_filter(tid, index, buffer)
        if count is None:
            break
        if not 0 < count <= S.BPF_MAXINSNS:
            raise SeccompUnverifiable(f"{_process_of(tid)} runs under a seccomp filter hotpatch cannot "
                                      f"verify: filter {index} has {count} instructions",
                                      f"{NOTHING_CHANGED}; restart it without the filter to patch it")
        filters.append(S.parse_program(buffer.raw[:count * S.SOCK_FILTER.size]))
    if not filters:
        raise _unreadable(tid, errno.EINVAL)
    return filters


def check_remote_syscalls(tid: int, arch_name: str, calls: list[tuple[str, int, list[int]]], gadget: int,
                          filters: list[list[S.Instruction]] | None = None) -> None:
    """Refuse (SeccompForbidden, a TraceError) if the filters of `tid` do not allow every call.

    calls: (name, number, arguments) as they will be made through the syscall
    instruction at `gadget`; missing arguments count as 0. `filters` skips the
    read (fetch_filters(tid)), e.g. when several threads share them. The
    thread must be seized and in a ptrace-stop unless `filters` is given.
    """
    if filters is None:
        filters = fetch_filters(tid)
    if not filters:
        return
    if arch_name not in AUDIT_ARCH:
        raise SeccompUnverifiable(f"{_process_of(tid)} runs under a seccomp filter hotpatch cannot verify "
                                  f"for architecture {arch_name}",
                                  f"{NOTHING_CHANGED}; restart it without the filter to patch it")
    try:
        verdict = S.first_forbidden(filters, AUDIT_ARCH[arch_name], gadget + SYSCALL_INSN_SIZE[arch_name],
                                    calls)
    except S.FilterError as e:
        raise SeccompUnverifiable(f"{_process_of(tid)} runs under a seccomp filter hotpatch cannot "
                                  f"interpret: {e}",
                                  f"{NOTHING_CHANGED}; restart it without the filter to patch it") from e
    if verdict is not None:
        name, action = verdict
        raise SeccompForbidden(f"{_process_of(tid)} runs under a seccomp filter that forbids {name} "
                               f"(action {S.describe(action)})",
                               f"{NOTHING_CHANGED}; allow {name} in its filter, or restart it without the "
                               "filter, to patch it")
