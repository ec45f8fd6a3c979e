"""A library loaded with dlopen is patched while an idle worker keeps the dlsym() pointer to the function
in a slot of its live frame: the word equals the function's entry, which a word scan takes for a return
address into it; the real frames (read <- wait_for_work <- worker) show it is none."""

import json

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

LIBRARY = Program("plugin.c", "-shared", "-fPIC")
HOST = Program("plugin_host.c", "-ldl")
FIX = Patch("patch_plugin.c", LIBRARY)


def test_dlsym_pointer_in_an_idle_frame(build, spawn):
    t = spawn([build(HOST), build(LIBRARY)])
    assert t.ask("score 3") == "7"
    r = hotpatch(str(t.pid), build(FIX), "--timeout", "5", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["checks"] <= 2 and "plugin" in report["module"]
    assert t.ask("score 3") == "1006"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("score 3") == "7"
