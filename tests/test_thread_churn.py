"""Threads created and ended without pause during attach and commit: every patch
applies, none is left stopped or traced."""

import os

from conftest import hotpatch


def test_churning_threads(cc, spawn):
    binary = cc.program("churn.c", "-fPIE", "-pie")
    patch = cc.patch("patch_work.c", binary)
    t = spawn(binary)
    for _ in range(5):
        r = hotpatch(str(t.pid), patch)
        assert r.returncode == 0, r.stderr
        assert t.ask("work 1") == "1001"
        r = hotpatch("revert", str(t.pid))
        assert r.returncode == 0, r.stderr
        assert t.ask("work 1") == "2"
    for tid in os.listdir(f"/proc/{t.pid}/task"):
        try:
            with open(f"/proc/{t.pid}/task/{tid}/status") as f:
                status = f.read()
        except FileNotFoundError:
            continue   # ended meanwhile
        assert "TracerPid:\t0" in status
        assert "State:\tt" not in status
