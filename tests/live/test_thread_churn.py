"""Threads created and ended without pause during attach and commit: every patch
applies, none is left stopped or traced."""

import os

import pytest
from harness import ARCH, Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("churn.c", "-fPIE", "-pie")
FIX = Patch("patch_work.c", TARGET)
CYCLES = {"x86_64": 5, "aarch64": 2}[ARCH]   # each apply takes seconds in the emulated ARM64 guest


def test_churning_threads(build, spawn):
    t = spawn(build(TARGET))
    patch = build(FIX)
    for _ in range(CYCLES):
        r = hotpatch(str(t.pid), patch)
        assert r.returncode == 0, r.stderr
        assert t.ask("work 1") == "1001"
        r = hotpatch("revert", str(t.pid))
        assert r.returncode == 0, r.stderr
        assert t.ask("work 1") == "2"
    checked = 0
    for tid in os.listdir(f"/proc/{t.pid}/task"):
        try:
            with open(f"/proc/{t.pid}/task/{tid}/status") as f:
                status = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue   # ended meanwhile (between the listing and the read: ENOENT or ESRCH)
        assert "TracerPid:\t0" in status
        assert "State:\tt" not in status
        checked += 1
    assert checked >= 3          # main and both churners at least: the loop above judged them
