"""Will the process's seccomp filter let hotpatch make its system calls? Asked before anything is written.

The filter is run, by the classic-BPF interpreter in safety/seccomp.py, on
the exact calls and arguments hotpatch will make through the exact gadget,
on the thread that will make them (filters are per thread). Whatever cannot
be read or interpreted counts as forbidding: hotpatch refuses rather than risk
a SECCOMP_RET_KILL.
"""

from dataclasses import dataclass

from hotpatch.arch.base import Arch
from hotpatch.errors import SeccompFilterError, SeccompForbidden, SeccompUnverifiable
from hotpatch.linux import (
    MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    NO_FD,
    PR_SET_VMA,
    PR_SET_VMA_ANON_NAME,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
)
from hotpatch.process.attach import Process
from hotpatch.process.seccomp import NOTHING_CHANGED, process_of
from hotpatch.safety import seccomp as S

Call = tuple[str, int, list[int]]   # (name, number, arguments)


@dataclass(frozen=True)
class SyscallPolicy:
    name_vmas: bool   # PR_SET_VMA_ANON_NAME may be used to name the image's mappings


def needed_calls(arch: Arch, page: int) -> list[Call]:
    """The calls apply and revert make, with arguments as a filter sees them (addresses 0)."""
    nr = arch.syscall_numbers
    anon = MAP_PRIVATE | MAP_ANONYMOUS
    return [("mmap", nr["mmap"], [0, page, PROT_READ | PROT_EXEC, anon | MAP_FIXED_NOREPLACE, NO_FD, 0]),
            ("mmap", nr["mmap"], [0, page, PROT_READ | PROT_EXEC, anon, NO_FD, 0]),
            ("mprotect", nr["mprotect"], [0, page, PROT_READ]),
            ("mprotect", nr["mprotect"], [0, page, PROT_READ | PROT_WRITE]),
            ("munmap", nr["munmap"], [0, page])]


def first_forbidden(tid: int, arch: Arch, filters: list, gadget: int, calls: list[Call]) -> tuple[str, int] | None:
    """(name, action) of the first call the filters do not allow, else None."""
    try:
        return S.first_forbidden(filters, arch.audit_arch, arch.after_syscall_insn(gadget), calls)
    except SeccompFilterError as e:
        raise SeccompUnverifiable(f"{process_of(tid)} runs under a seccomp filter hotpatch cannot "
                                  f"interpret: {e.message}",
                                  f"{NOTHING_CHANGED}; restart it without the filter to patch it") from e


def require_allowed(tid: int, arch: Arch, filters: list, gadget: int, calls: list[Call]) -> None:
    """Refuse (SeccompForbidden) unless the filters allow every call."""
    verdict = first_forbidden(tid, arch, filters, gadget, calls)
    if verdict is not None:
        name, action = verdict
        raise SeccompForbidden(f"{process_of(tid)} runs under a seccomp filter that forbids {name} "
                               f"(action {S.describe(action)})",
                               f"{NOTHING_CHANGED}; allow {name} in its filter, or restart it without the "
                               "filter, to patch it")


def check_process(proc: Process) -> SyscallPolicy:
    """Refuse a process whose filter forbids a needed call; say whether mappings may be named."""
    filters, gadget = proc.seccomp_filters()
    if not filters:
        return SyscallPolicy(name_vmas=True)
    tid, arch = proc.syscall_thread(), proc.arch
    require_allowed(tid, arch, filters, gadget, needed_calls(arch, proc.page_size))
    # Naming the image's mappings is optional: an ERRNO answer only means we
    # skip it; anything harsher (kill, trap) is refused like a needed call.
    name_call = [("prctl", arch.syscall_numbers["prctl"], [PR_SET_VMA, PR_SET_VMA_ANON_NAME, 0, proc.page_size, 0])]
    verdict = first_forbidden(tid, arch, filters, gadget, name_call)
    if verdict is None:
        return SyscallPolicy(name_vmas=True)
    if verdict[1] & S.SECCOMP_RET_ACTION_FULL != S.SECCOMP_RET_ERRNO:
        require_allowed(tid, arch, filters, gadget, name_call)
    return SyscallPolicy(name_vmas=False)
