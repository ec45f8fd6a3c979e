"""A patch built with retpolines and return thunks (-mindirect-branch=thunk -mfunction-return=thunk)
applies and reverts on an idle service: the return thunk in the image leaves its own return address in
dead stack slots after every return, which only real frames tell from a live one."""

import json

from harness import Patch, Program, host_only, hotpatch

pytestmark = host_only("-mindirect-branch and -mfunction-return are x86-64 options")

SERVICE = Program("stale_slot.c")
FIX = Patch("patch_score.c", SERVICE, "--cflags", "-mindirect-branch=thunk -mfunction-return=thunk")


def test_thunk_patch_applies_and_reverts(build, spawn):
    t = spawn(build(SERVICE))
    r = hotpatch(str(t.pid), build(FIX), "--timeout", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert t.ask("kick") == "kicked"            # the workers returned through the image's thunk
    assert t.ask("score 3") == "1008"
    r = hotpatch("revert", str(t.pid), "--timeout", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["checks"] <= 2
    assert t.ask("score 3") == "9"
