"""A filter that cannot be read is treated as forbidding: the process is refused (exit 5), with
why (CAP_SYS_ADMIN); a thread not in a ptrace-stop is reported gone, as the kernel says."""

import errno

import pytest
from harness import ARCH, Program
from ptrace import PtraceError

from hotpatch.arch import get_arch
from hotpatch.errors import EXIT_TRACE, ProcessGone, SeccompUnverifiable
from hotpatch.live import sandbox
from hotpatch.process import seccomp as T
from hotpatch.process.attach import attach

pytestmark = pytest.mark.arm64

TARGET = Program("seccomp_allow.c")


def test_unreadable_filters_refuse(build, spawn, monkeypatch):
    t = spawn(build(TARGET))
    with pytest.raises(ProcessGone, match="ptrace-stop"):   # not seized: the kernel says ESRCH
        T.fetch_filters(t.pid)

    def refuse(*args):
        raise PtraceError("refused", errno=errno.EACCES)
    monkeypatch.setattr(T, "_raw_ptrace", refuse)
    proc = attach(t.pid, get_arch(ARCH))
    try:
        with pytest.raises(SeccompUnverifiable) as e:
            sandbox.check_process(proc)
    finally:
        proc.close()
    assert e.value.exit_code == EXIT_TRACE
    assert e.value.message.startswith(f"process {t.pid} runs under a seccomp filter hotpatch cannot verify")
    assert "CAP_SYS_ADMIN" in e.value.message
    assert t.status("TracerPid") == "0"
    assert t.ask("work 5") == "1187"
