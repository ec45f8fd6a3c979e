"""What the refusal prevents: the call the filter forbids (mmap, KILL_PROCESS) really kills the
process when made remotely; hotpatch says the process is gone."""

import os

import pytest
from harness import ARCH, Program

from hotpatch.arch import get_arch
from hotpatch.errors import ProcessGone
from hotpatch.linux import MAP_ANONYMOUS, MAP_PRIVATE, NO_FD, PROT_READ
from hotpatch.live import sandbox
from hotpatch.process.attach import attach
from hotpatch.safety import seccomp as S

pytestmark = pytest.mark.arm64

TARGET = Program("seccomp_deny_mmap.c")


def test_forbidden_mmap_really_kills(build, spawn):
    t = spawn(build(TARGET))
    arch = get_arch(ARCH)
    proc = attach(t.pid, arch)
    try:
        filters, gadget = proc.seccomp_filters()
        mmap = sandbox.needed_calls(arch, proc.page_size)[:1]
        assert sandbox.first_forbidden(t.pid, arch, filters, gadget, mmap) == ("mmap", S.SECCOMP_RET_KILL_PROCESS)
        with pytest.raises(ProcessGone):
            proc.syscall("mmap", 0, proc.page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, NO_FD, 0)
    finally:
        proc.close()
    assert not os.path.exists(f"/proc/{t.pid}")   # killed by the kernel, and reaped as its tracer saw it die
