"""A thread held in its clone event is inside clone(): a remote system call borrowed there
must not restore registers that predate clone()'s result (found on CPython's
ThreadingHTTPServer: bench/real_zlib_server, "double free detected in tcache 2")."""

import time

import pytest
from harness import ARCH, TIME_SCALE, Patch, Program, hotpatch

from hotpatch.process.attach import attach, process_arch

pytestmark = pytest.mark.arm64

TARGET = Program("spawner.c", "-fPIE", "-pie")
FIX = Patch("patch_work.c", TARGET)
PR_GET_DUMPABLE = 3
BORROWED = {"x86_64": 20, "aarch64": 5}[ARCH]


def test_remote_syscalls_in_clone_stops(build, spawn):
    t = spawn(build(TARGET))
    proc = attach(t.pid, process_arch(t.pid))
    borrowed, tries, deadline = 0, 0, time.monotonic() + 60 * TIME_SCALE
    try:
        while borrowed < BORROWED:
            assert time.monotonic() < deadline, f"{borrowed} clone stops in {tries} tries"
            tries += 1
            proc.stop_thread(t.pid)
            try:
                if proc.threads.tracees[t.pid].in_clone:
                    assert proc.syscall("prctl", PR_GET_DUMPABLE) == 1
                    borrowed += 1
            finally:
                proc.resume_thread(t.pid)
    finally:
        proc.close()
    assert t.ask("work 1") == "2"      # alive, and no child started twice (it would print and exit)
    assert t.alive()


def test_apply_and_revert_while_main_thread_creates_threads(build, spawn):
    t = spawn(build(TARGET))
    patch = build(FIX)
    for _ in range(3):
        r = hotpatch(str(t.pid), patch)
        assert r.returncode == 0, r.stderr
        assert t.ask("work 1") == "1001"
        r = hotpatch("revert", str(t.pid))
        assert r.returncode == 0, r.stderr
        assert t.ask("work 1") == "2"
