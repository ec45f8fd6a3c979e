"""C++ exceptions thrown inside replaced functions and through them are caught by the original callers,
while four threads throw, across apply and revert, three times over: the image's unwind information is
registered with the process's own unwinder (libgcc) and deregistered before it is freed."""

import json

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

CXX = Program("exceptions.cpp", "-lstdc++")
FIX = Patch("patch_exceptions.cpp", CXX)


def test_exceptions_cross_patch_code(build, spawn):
    t = spawn(build(CXX))
    assert (t.ask("check -1"), t.ask("pass -1"), t.ask("pass 3")) == ("caught negative", "caught negative", "ok 7")
    assert t.ask("threads") == "started"
    for _ in range(3):
        r = hotpatch(str(t.pid), build(FIX), "--json")
        assert r.returncode == 0, r.stderr
        assert "registered" in json.loads(r.stdout)["timings_ms"]   # the frames were registered
        assert t.ask("pass 3") == "ok 108"
        assert t.ask("check -1") == "caught patched negative"     # thrown inside patch code
        assert t.ask("pass -1") == "caught patched negative"      # and through it
        r = hotpatch("revert", str(t.pid), "--json")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["freed"] == [report["reverted"][0]] and report["retired"] == [], report
        assert (t.ask("check -1"), t.ask("pass -1"), t.ask("pass 3")) == ("caught negative", "caught negative",
                                                                          "ok 7")
    assert t.ask("join") == "threads caught"
    assert "hotpatch" not in t.maps()
    assert t.alive()
