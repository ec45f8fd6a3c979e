"""A process without a seccomp filter needs no PTRACE_SECCOMP_GET_FILTER (no CAP_SYS_ADMIN):
its filters are known to be none from /proc, before it is even seized."""

import pytest
from harness import ARCH, Program

from hotpatch.arch import get_arch
from hotpatch.live import sandbox
from hotpatch.process import seccomp as T
from hotpatch.process.attach import attach

pytestmark = pytest.mark.arm64

TARGET = Program("target.c")


def test_unfiltered_process_needs_no_request(build, spawn, monkeypatch):
    t = spawn(build(TARGET))
    assert T.fetch_filters(t.pid) == []     # not seized: a request would fail with ESRCH

    def no_request(*args):
        raise AssertionError("PTRACE_SECCOMP_GET_FILTER requested for an unfiltered process")
    monkeypatch.setattr(T, "_raw_ptrace", no_request)
    proc = attach(t.pid, get_arch(ARCH))
    try:
        assert proc.seccomp_filters() == ([], 0)
        assert sandbox.check_process(proc) == sandbox.SyscallPolicy(name_vmas=True)
    finally:
        proc.close()
    assert t.ask("compute 2") == "5"
