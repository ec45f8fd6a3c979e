"""A stack that cannot be walked reliably counts as busy, and says so: the workers of the stale-slot service
block through a stub in anonymous executable memory, which no unwind table describes, below a frame that
holds a word pointing into score(). Without the stub the same service is patched at once."""

import json

from harness import Patch, Program, host_only, hotpatch

pytestmark = host_only("the stale word lands above the stub's frame with x86-64's frame layouts only; "
                       "aarch64 walks that stop without CFI are covered by tests/unit/test_unwind_walk.py")

SERVICE = Program("stale_slot.c")
FIX = Patch("patch_score.c", SERVICE)


def test_unwalkable_frame_is_busy(build, spawn):
    binary = build(SERVICE)
    t = spawn([binary, "anon"])
    r = hotpatch(str(t.pid), build(FIX), "--timeout", "0.5", "--json")
    assert r.returncode == 3, r.stdout
    out = json.loads(r.stdout)
    assert "unreliable stack" in out["message"] and "no CFI" in out["message"]
    assert out["busy"]["function"] == "score"
    assert out["busy"]["backtrace"][:2] == ["read", "wait_for_work"]
    assert "hotpatch" not in t.maps() and t.ask("score 3") == "9"
