"""A fault at any step of apply leaves the process exactly as it was: same code bytes,
same mappings, not traced, same behaviour; and it still patches normally afterwards.
Faults are injected deterministically with HOTPATCH_FAULT=apply:STEP."""

import pytest
from harness import Patch, Program, hotpatch, process_state

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)
FUNCTIONS = ("compute", "fact", "version")
STEPS = ["parsed", "verified", "resolved", "mapped", "filled", "stopping", "stopped", "checked",
         "first-switched", "switched"]


@pytest.mark.parametrize("step", STEPS)
def test_fault_during_apply_changes_nothing(build, spawn, step):
    binary, patch = build(TARGET), build(FIX)
    t = spawn(binary)
    before = process_state(t, binary, FUNCTIONS)
    r = hotpatch(str(t.pid), patch, env={"HOTPATCH_FAULT": f"apply:{step}"})
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == f"hotpatch: fault injected at apply:{step}"
    assert process_state(t, binary, FUNCTIONS) == before
    assert t.ask("compute 5") == "11" and t.ask("version") == "v1"
    r = hotpatch(str(t.pid), patch)
    assert r.returncode == 0, r.stderr
    assert t.ask("compute 5") == "51"
