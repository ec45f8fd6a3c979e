"""The image's unmap failing after revert restored the code: the jumps are gone and the
other threads run again, so the failure cannot undo the revert; revert exits 0 with one
warning, the image stays mapped, and the next run (even a list) frees it."""

import pytest
from harness import Patch, Program, hotpatch, process_state

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)
FUNCTIONS = ("compute", "fact", "version")


def test_unmap_failing_after_revert_keeps_the_revert_and_a_later_revert_frees(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    original = process_state(t, binary, FUNCTIONS)
    assert hotpatch(str(t.pid), build(FIX)).returncode == 0
    r = hotpatch("revert", str(t.pid), "--json", env={"HOTPATCH_FAULT": "revert:unmapping"})
    assert r.returncode == 0, r.stderr
    assert "warning: the image of patch 1 stays mapped" in r.stderr and len(r.stderr.splitlines()) == 1
    code, maps, traced = process_state(t, binary, FUNCTIONS)
    assert code == original[0] and traced == "0" and maps != original[1]
    assert t.ask("compute 5") == "11"
    listed = hotpatch("list", str(t.pid))
    assert "repaired: patch 1" in listed.stderr and "no patches applied" in listed.stdout, listed.stderr
    assert process_state(t, binary, FUNCTIONS) == original
