"""Filters read back from a live process (PTRACE_SECCOMP_GET_FILTER) judge hotpatch's calls as the
kernel does: the process forbidding mmap is refused with the call named; the stacked filters'
verdict on another call (personality: ERRNO(EPERM) from the newest) is what the kernel answers."""

import errno

import pytest
from harness import ARCH, Program, arch_with_syscalls

from hotpatch.errors import EXIT_TRACE, RemoteSyscallError, SeccompForbidden
from hotpatch.live import sandbox
from hotpatch.process.attach import attach
from hotpatch.safety import seccomp as S

pytestmark = pytest.mark.arm64

TARGET = Program("seccomp_deny_mmap.c")
NR_PERSONALITY = {"x86_64": 135, "aarch64": 92}[ARCH]


def test_stacked_filters_read_back_and_judged_as_the_kernel_does(build, spawn):
    t = spawn(build(TARGET))
    assert t.ask("work 5") == "1187"
    arch = arch_with_syscalls(personality=NR_PERSONALITY)
    proc = attach(t.pid, arch)
    try:
        filters, gadget = proc.seccomp_filters()
        assert [len(f) for f in filters] == [8, 4]   # oldest first: kill-mmap, then no-personality
        assert filters[0][0] == (S.BPF_LD | S.BPF_W | S.BPF_ABS, 0, 0, 4)   # the arch check comes first
        with pytest.raises(SeccompForbidden) as e:
            sandbox.check_process(proc)
        assert e.value.message == f"process {t.pid} runs under a seccomp filter that forbids mmap " \
                                  "(action KILL_PROCESS)"
        assert e.value.exit_code == EXIT_TRACE
        calls = sandbox.needed_calls(arch, proc.page_size)
        assert sandbox.first_forbidden(t.pid, arch, filters, gadget, calls) == ("mmap", S.SECCOMP_RET_KILL_PROCESS)
        rest = [c for c in calls if c[0] != "mmap"]
        assert rest and sandbox.first_forbidden(t.pid, arch, filters, gadget, rest) is None

        # The kernel agrees: personality gets the newest filter's EPERM ...
        query = [("personality", NR_PERSONALITY, [0xFFFF_FFFF])]
        assert sandbox.first_forbidden(t.pid, arch, filters, gadget, query) == \
            ("personality", S.SECCOMP_RET_ERRNO | errno.EPERM)
        with pytest.raises(RemoteSyscallError) as e:
            proc.syscall("personality", 0xFFFF_FFFF)
        assert e.value.errno == errno.EPERM
        # ... and an allowed call gets the kernel's own answer.
        with pytest.raises(RemoteSyscallError) as e:
            proc.syscall("munmap", 0, 0)
        assert e.value.errno == errno.EINVAL
    finally:
        proc.close()
    assert t.status("TracerPid") == "0"
    assert t.ask("work 13") == "9698"            # detached, untouched, still serving
