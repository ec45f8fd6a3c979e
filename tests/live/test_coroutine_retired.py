"""A coroutine parked inside a patched function keeps the image alive: revert restores the code but retires
the image instead of freeing what the coroutine will return into; gc frees it once nothing points there."""

import json

import pytest
from harness import Patch, Program, hotpatch, image_of, mappings_in

pytestmark = pytest.mark.arm64

COROUTINE = Program("coroutine.c")
FIX = Patch("patch_coroutine.c", COROUTINE)


def test_parked_coroutine_keeps_the_image(build, spawn):
    t = spawn(build(COROUTINE))
    assert t.ask("resume") == "1 0"
    r = hotpatch(str(t.pid), build(FIX), "--json")
    assert r.returncode == 0, r.stderr
    base, size = image_of(json.loads(r.stdout))
    assert t.ask("resume") == "1 1"             # parked inside the new step()

    r = hotpatch("revert", str(t.pid), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [u["id"] for u in report["retired"]] == [1] and report["freed"] == []
    assert "pointer into the code of patch 1" in report["retired"][0]["reason"]
    assert mappings_in(t.maps(), base, size)    # still mapped
    listed = json.loads(hotpatch("list", str(t.pid), "--json").stdout)["patches"]
    assert [(p["id"], p["status"]) for p in listed] == [(1, "retired")]

    assert t.ask("resume") == "101 0"           # returned from the patch's step() it was parked in
    assert t.ask("resume") == "102 0"           # the original step() again
    r = hotpatch("revert", str(t.pid))
    assert r.returncode == 2 and "no patch is applied" in r.stderr and "gc" in r.stderr

    assert t.ask("finish") == "done"            # the coroutine and its stack are gone
    r = hotpatch("gc", str(t.pid), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["freed"] == [1]
    assert not mappings_in(t.maps(), base, size)
    assert json.loads(hotpatch("list", str(t.pid), "--json").stdout)["patches"] == []
    assert t.alive()
