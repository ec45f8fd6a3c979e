"""A filter that lets hotpatch's calls through is judged so, and the kernel agrees: the calls work
remotely, while the call it forbids (ptrace: ERRNO(EPERM)) gets that answer from both."""

import errno

import pytest
from harness import ARCH, Program, arch_with_syscalls

from hotpatch.errors import RemoteSyscallError
from hotpatch.linux import MAP_ANONYMOUS, MAP_PRIVATE, NO_FD, PROT_EXEC, PROT_READ
from hotpatch.live import sandbox
from hotpatch.process.attach import attach
from hotpatch.safety import seccomp as S

pytestmark = pytest.mark.arm64

TARGET = Program("seccomp_allow.c")
NR_PTRACE = {"x86_64": 101, "aarch64": 117}[ARCH]
PTRACE_CONT = 7


def test_allowing_filter_judged_as_the_kernel_does(build, spawn):
    t = spawn(build(TARGET))
    arch = arch_with_syscalls(ptrace=NR_PTRACE)
    proc = attach(t.pid, arch)
    try:
        filters, gadget = proc.seccomp_filters()
        assert [len(f) for f in filters] == [7]
        assert sandbox.first_forbidden(t.pid, arch, filters, gadget, sandbox.needed_calls(arch, 4096)) is None
        assert sandbox.check_process(proc) == sandbox.SyscallPolicy(name_vmas=True)

        # The kernel agrees: the calls hotpatch makes work; ptrace gets the filter's EPERM
        # (without the filter, PTRACE_CONT on a pid that cannot exist says ESRCH).
        size = 3 * proc.page_size
        base = proc.syscall("mmap", 0, size, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, NO_FD, 0)
        assert proc.syscall("mprotect", base, proc.page_size, PROT_READ) == 0
        assert proc.syscall("munmap", base, size) == 0
        probe = [("ptrace", NR_PTRACE, [PTRACE_CONT, 0x3FFF_FFFF, 0, 0])]
        assert sandbox.first_forbidden(t.pid, arch, filters, gadget, probe) == \
            ("ptrace", S.SECCOMP_RET_ERRNO | errno.EPERM)
        with pytest.raises(RemoteSyscallError) as e:
            proc.syscall("ptrace", PTRACE_CONT, 0x3FFF_FFFF, 0, 0)
        assert e.value.errno == errno.EPERM
    finally:
        proc.close()
    assert t.ask("work 5") == "1187"
