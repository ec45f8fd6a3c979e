"""A failure after the patch's frames were registered with the process's unwinder undoes the
registration before the image is unmapped: the unwinder never keeps a pointer into freed memory, and
exceptions keep working, while four threads throw."""

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

CXX = Program("exceptions.cpp", "-lstdc++")
FIX = Patch("patch_exceptions.cpp", CXX)


def test_fault_after_registration_is_undone(build, spawn):
    t = spawn(build(CXX))
    assert t.ask("threads") == "started"
    r = hotpatch(str(t.pid), build(FIX), env={"HOTPATCH_FAULT": "apply:registered"})
    assert r.returncode == 1 and "fault injected at apply:registered" in r.stderr, r.stderr
    # Unmapped after deregistration (the throwing threads change the rest of the maps themselves).
    assert "hotpatch" not in t.maps()
    assert (t.ask("check -1"), t.ask("pass -1"), t.ask("pass 3")) == ("caught negative", "caught negative",
                                                                      "ok 7")
    r = hotpatch(str(t.pid), build(FIX))                 # and it can be applied for real afterwards
    assert r.returncode == 0, r.stderr
    assert t.ask("pass -1") == "caught patched negative"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("join") == "threads caught" and t.status("TracerPid") == "0"
