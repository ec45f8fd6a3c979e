"""A fault at any step of revert before the switch leaves the patch standing exactly as it
was; a later revert restores the original. HOTPATCH_FAULT=revert:STEP."""

import pytest
from harness import Patch, Program, hotpatch, process_state

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)
FUNCTIONS = ("compute", "fact", "version")
STEPS = ["stopping", "stopped", "checked", "first-restored"]


@pytest.mark.parametrize("step", STEPS)
def test_fault_during_revert_keeps_patch(build, spawn, step):
    binary = build(TARGET)
    t = spawn(binary)
    original = process_state(t, binary, FUNCTIONS)
    assert hotpatch(str(t.pid), build(FIX)).returncode == 0
    patched = process_state(t, binary, FUNCTIONS)
    assert patched[0] != original[0]
    r = hotpatch("revert", str(t.pid), env={"HOTPATCH_FAULT": f"revert:{step}"})
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == f"hotpatch: fault injected at revert:{step}"
    assert process_state(t, binary, FUNCTIONS) == patched
    assert t.ask("compute 5") == "51"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert process_state(t, binary, FUNCTIONS) == original
