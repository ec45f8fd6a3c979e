"""A patch to a library that the process then dlclose()s: `list` says "library unloaded" (not
"unverifiable", not "inactive"), revert frees its image with a note (there is no code to restore) and exits
0. Loaded again, the library is a new module: the old patch is not on it (the next run says so and frees
its image), a new apply is."""

import json

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

LIBRARY = Program("plugin.c", "-shared", "-fPIC")
HOST = Program("plugin_cycle.c", "-ldl")
FIX = Patch("patch_plugin.c", LIBRARY)


def test_revert_after_dlclose(build, spawn):
    t = spawn([build(HOST), build(LIBRARY)])
    assert t.ask("load") == "loaded" and t.ask("score 3") == "7"
    assert hotpatch(str(t.pid), build(FIX)).returncode == 0
    assert t.ask("score 3") == "1006" and len(t.images()) == 1
    assert t.ask("unload") == "unloaded"
    r = hotpatch("list", str(t.pid), "--json")
    assert r.returncode == 0, r.stderr
    assert [p["status"] for p in json.loads(r.stdout)["patches"]] == ["library unloaded"]
    r = hotpatch("revert", str(t.pid))
    assert r.returncode == 0, r.stderr
    assert "is no longer loaded; its image is freed" in r.stderr
    assert t.images() == []
    assert t.ask("load") == "loaded" and t.ask("score 3") == "7"     # the library as it is on disk
    assert hotpatch(str(t.pid), build(FIX)).returncode == 0
    assert t.ask("score 3") == "1006" and t.status("TracerPid") == "0"


def test_list_after_the_library_came_back(build, spawn):
    t = spawn([build(HOST), build(LIBRARY)])
    assert t.ask("load") == "loaded"
    assert hotpatch(str(t.pid), build(FIX)).returncode == 0
    assert t.ask("unload") == "unloaded" and t.ask("load") == "loaded"
    assert t.ask("score 3") == "7"          # reloaded from the file: the old jump is gone with the old mapping
    r = hotpatch("list", str(t.pid))
    assert r.returncode == 0, r.stderr
    # mapped again where it was: the record's sites hold the file's code, no jump of it stands
    assert "patch 1 (" in r.stderr and "no jump standing" in r.stderr and "its library loaded again" in r.stderr, \
        r.stderr
    assert "no patches applied" in r.stdout and t.images() == []


def test_apply_before_the_library_is_loaded(build, spawn):
    """A patch for a library the process has not loaded (yet): the remedy says to wait for it, not to
    rebuild against the main program."""
    t = spawn([build(HOST), build(LIBRARY)])
    r = hotpatch(str(t.pid), build(FIX))
    assert r.returncode == 4, r.stderr
    assert "has not loaded the binary this patch was built for" in r.stderr
    assert "apply once the process has loaded it (dlopen)" in r.stderr, r.stderr
    assert t.ask("load") == "loaded"
    assert hotpatch(str(t.pid), build(FIX)).returncode == 0 and t.ask("score 3") == "1006"
