"""The seccomp filters of a traced thread, read from the kernel (judged in live/sandbox.py).

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

from hotpatch.errors import ProcessGone, SeccompForbidden, SeccompUnverifiable
from hotpatch.process import ptrace as P
from hotpatch.safety import seccomp as S

PTRACE_SECCOMP_GET_FILTER = 0x420C
EMEDIUMTYPE = getattr(errno, "EMEDIUMTYPE", 124)

NOTHING_CHANGED = "nothing was changed"


def process_of(tid: int) -> str:
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
    return SeccompUnverifiable(f"{process_of(tid)} runs under a seccomp filter hotpatch cannot verify: "
                               f"{why}", f"{NOTHING_CHANGED}; {remedy}")


def _get_filter(tid: int, index: int, buffer) -> int | None:
    """Instructions copied for filter `index`, or None past the last filter."""
    try:
        return _raw_ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, ctypes.addressof(buffer))
    except PtraceError as e:
        if e.errno == errno.ENOENT:
            return None
        if e.errno == errno.ESRCH:
            raise ProcessGone(f"thread {tid} exited (or is not in a ptrace-stop)") from e
        raise _unreadable(tid, e.errno or 0) from e


def fetch_filters(tid: int) -> list[list[S.Instruction]]:
    """Every filter of a seized, ptrace-stopped thread, oldest first; [] when it has none.

    One request per filter: the buffer holds the largest program the kernel
    accepts (BPF_MAXINSNS), so no count is asked first and no filter added
    meanwhile (TSYNC from another thread) can overflow it.
    """
    mode = P.status_field(tid, "Seccomp")
    if mode is None:
        raise ProcessGone(f"thread {tid} exited")
    if mode == "0":
        return []   # no request at all: no CAP_SYS_ADMIN needed for unfiltered targets
    if mode == "1":
        raise SeccompForbidden(f"{process_of(tid)} runs in seccomp strict mode, which forbids mmap",
                               f"{NOTHING_CHANGED}; it cannot be patched live")
    buffer = ctypes.create_string_buffer(S.BPF_MAXINSNS * S.SOCK_FILTER.size)
    filters = []
    for index in itertools.count():
        count = _get_filter(tid, index, buffer)
        if count is None:
            break
        if not 0 < count <= S.BPF_MAXINSNS:
            raise SeccompUnverifiable(f"{process_of(tid)} runs under a seccomp filter hotpatch cannot "
                                      f"verify: filter {index} has {count} instructions",
                                      f"{NOTHING_CHANGED}; restart it without the filter to patch it")
        filters.append(S.parse_program(buffer.raw[:count * S.SOCK_FILTER.size]))
    if not filters:
        raise _unreadable(tid, errno.EINVAL)
    return filters
