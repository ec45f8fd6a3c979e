"""Patches stacked on one function: reverted newest first, or in any order (a function returns to the
newest version that stays, in one stop; the older image freed); --all reverts the rest; a patch is not
applied twice."""

import json
import os
import signal

import pytest
from harness import Patch, Program, children_of, hotpatch, hotpatch_popen, image_of, mappings_in

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIRST = Patch("patch_target.c", TARGET)
SECOND = Patch("patch_target2.c", TARGET)
THIRD = Patch("patch_target3.c", TARGET)


def test_stacked_patches_revert_in_order(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    entry = t.symbol_address(binary, "compute")
    original = t.read_mem(entry, 32)
    r = hotpatch(str(t.pid), build(FIRST), "--json")
    assert r.returncode == 0, r.stderr
    image1 = image_of(json.loads(r.stdout))
    r = hotpatch(str(t.pid), build(FIRST))
    assert r.returncode == 4 and "already applied" in r.stderr
    r = hotpatch(str(t.pid), build(SECOND), "--json")
    assert r.returncode == 0, r.stderr
    image2 = image_of(json.loads(r.stdout))
    assert t.ask("compute 5") == "1000"
    assert t.ask("version") == "v2-patched-calls=0"     # patch 1 still active for version()

    assert hotpatch("revert", str(t.pid)).returncode == 0      # newest: patch 2
    assert t.ask("compute 5") == "51"
    assert mappings_in(t.maps(), *image2) == [] and mappings_in(t.maps(), *image1) != []
    assert hotpatch("revert", str(t.pid), "--all").returncode == 0
    assert t.ask("compute 5") == "11"
    assert t.read_mem(entry, 32) == original
    assert mappings_in(t.maps(), *image1) == []


def test_revert_out_of_order(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    entry = t.symbol_address(binary, "compute")
    original = t.read_mem(entry, 32)
    images = []
    for patch in (FIRST, SECOND, THIRD):
        r = hotpatch(str(t.pid), build(patch), "--json")
        assert r.returncode == 0, r.stderr
        images.append(image_of(json.loads(r.stdout)))
    assert t.ask("compute 5") == "10000" and t.ask("version").startswith("v2-patched")

    r = hotpatch("revert", str(t.pid), "2")                   # the middle one of three
    assert r.returncode == 0, r.stderr
    assert t.ask("compute 5") == "10000"                      # patch 3 stays on top
    assert mappings_in(t.maps(), *images[1]) == []
    r = hotpatch("list", str(t.pid), "--json")
    assert [(p["id"], p["status"]) for p in json.loads(r.stdout)["patches"]] == \
        [(1, "superseded by patch 3"), (3, "active")]

    r = hotpatch("revert", str(t.pid), "1")                   # the oldest, under patch 3
    assert r.returncode == 0, r.stderr
    assert t.ask("compute 5") == "10000" and t.ask("version") == "v1"   # version() was patch 1's alone
    assert mappings_in(t.maps(), *images[0]) == []

    assert hotpatch("revert", str(t.pid)).returncode == 0     # patch 3: back to the original bytes
    assert t.ask("compute 5") == "11"
    assert t.read_mem(entry, 32) == original and t.status("TracerPid") == "0"


def test_out_of_order_revert_killed_midway_is_completed(build, spawn):
    """The executor SIGKILLed after the first site of an out-of-order revert is written, before the patch
    that stays records its new saved bytes: the next run finishes the job."""
    t = spawn(build(TARGET))
    for patch in (FIRST, SECOND):
        assert hotpatch(str(t.pid), build(patch)).returncode == 0
    p = hotpatch_popen("revert", str(t.pid), "1", env={"HOTPATCH_PAUSE_AT": "revert:first-restored"})
    assert p.stderr.readline().strip() == "hotpatch: paused at revert:first-restored"
    for pid in children_of(p.pid):
        os.kill(pid, signal.SIGKILL)
    p.communicate(timeout=30)
    # cut after its first site (fact, restored), before version and before patch 2's record
    assert t.ask("compute 5") == "1000" and t.ask("fact 3") == "6" and t.ask("version").startswith("v2")
    r = hotpatch("gc", str(t.pid))
    assert r.returncode == 0, r.stderr
    assert "half reverted by an interrupted run, from under a newer patch: completed" in r.stderr, r.stderr
    assert t.ask("version") == "v1" and t.ask("compute 5") == "1000"
    r = hotpatch("list", str(t.pid), "--json")
    assert [(p["id"], p["status"]) for p in json.loads(r.stdout)["patches"]] == [(2, "active")]
    assert hotpatch("revert", str(t.pid)).returncode == 0     # patch 2's saved bytes are the original now
    assert t.ask("compute 5") == "11" and t.alive()
