"""An idle service is not busy: workers called score() and now block with score's stale return address
in a buffer of a live frame. The word scan finds it; the real frames (read <- wait_for_work <- idle <-
worker) do not contain score, so the patch goes in at the first check, and reverts the same way after the
workers ran the new code."""

import json

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

SERVICE = Program("stale_slot.c")
FIX = Patch("patch_score.c", SERVICE)


def test_idle_workers_are_not_busy(build, spawn):
    t = spawn(build(SERVICE))
    assert t.ask("score 3") == "9"
    r = hotpatch(str(t.pid), build(FIX), "--timeout", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["checks"] <= 2
    assert t.ask("score 3") == "1008"
    assert t.ask("kick") == "kicked"           # every worker ran the new score() and blocks again
    r = hotpatch("revert", str(t.pid), "--timeout", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["checks"] <= 2
    assert t.ask("score 3") == "9"
