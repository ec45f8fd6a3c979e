"""A fault at any step of apply or revert leaves the target exactly as it was:
same code bytes, same mappings, not traced, same behaviour. Faults are injected
deterministically with HOTPATCH_FAULT=OPERATION:STEP."""

import pytest

from conftest import hotpatch

FUNCTIONS = ("compute", "fact", "version")
APPLY_STEPS = ["parsed", "verified", "resolved", "mapped", "filled", "stopping", "stopped", "checked",
               "first-switched", "switched"]
REVERT_STEPS = ["stopping", "stopped", "checked", "first-restored"]


def state(t, binary):
    code = {f: t.read_mem(t.symbol_address(binary, f), 32) for f in FUNCTIONS}
    with open(f"/proc/{t.pid}/status") as f:
        traced = next(l for l in f if l.startswith("TracerPid")).split()[1]
    return code, t.maps(), traced


@pytest.mark.parametrize("step", APPLY_STEPS)
def test_fault_during_apply_changes_nothing(cc, spawn, step):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn(binary)
    before = state(t, binary)
    r = hotpatch(str(t.pid), patch, env={"HOTPATCH_FAULT": f"apply:{step}"})
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == f"hotpatch: fault injected at apply:{step}"
    assert state(t, binary) == before
    assert t.ask("compute 5") == "11" and t.ask("version") == "v1"
    r = hotpatch(str(t.pid), patch)                  # and it still patches normally afterwards
    assert r.returncode == 0, r.stderr
    assert t.ask("compute 5") == "51"


@pytest.mark.parametrize("step", REVERT_STEPS)
def test_fault_during_revert_keeps_patch(cc, spawn, step):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn(binary)
    original = state(t, binary)
    assert hotpatch(str(t.pid), patch).returncode == 0
    patched = state(t, binary)
    r = hotpatch("revert", str(t.pid), env={"HOTPATCH_FAULT": f"revert:{step}"})
    assert r.returncode == 1, r.stderr
    assert state(t, binary) == patched
    assert t.ask("compute 5") == "51"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert state(t, binary) == original


def test_unmap_failing_after_revert_keeps_the_revert_and_a_later_revert_frees(cc, spawn):
    # The jumps are gone and the other threads run again when the image is
    # unmapped: a failure there cannot undo the revert; it leaves memory only.
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn(binary)
    original = state(t, binary)
    assert hotpatch(str(t.pid), patch).returncode == 0
    r = hotpatch("revert", str(t.pid), "--json", env={"HOTPATCH_FAULT": "revert:unmapping"})
    assert r.returncode == 0, r.stderr
    assert "warning: the image of patch 1 stays mapped" in r.stderr and len(r.stderr.splitlines()) == 1
    code, maps, traced = state(t, binary)
    assert code == original[0] and traced == "0" and maps != original[1]
    assert t.ask("compute 5") == "11"
    listed = hotpatch("list", str(t.pid))
    assert "inactive" in listed.stdout, listed.stdout
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert state(t, binary) == original
