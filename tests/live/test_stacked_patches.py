"""Two patches stacked on one function: reverted newest first; an older one is refused
while a newer one stands; --all reverts the rest; a patch is not applied twice."""

import json

import pytest
from harness import Patch, Program, hotpatch, image_of, mappings_in

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIRST = Patch("patch_target.c", TARGET)
SECOND = Patch("patch_target2.c", TARGET)


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

    r = hotpatch("revert", str(t.pid), "1")
    assert r.returncode == 2 and "revert patch 2 first" in r.stderr
    assert hotpatch("revert", str(t.pid)).returncode == 0      # newest: patch 2
    assert t.ask("compute 5") == "51"
    assert mappings_in(t.maps(), *image2) == [] and mappings_in(t.maps(), *image1) != []
    assert hotpatch("revert", str(t.pid), "--all").returncode == 0
    assert t.ask("compute 5") == "11"
    assert t.read_mem(entry, 32) == original
    assert mappings_in(t.maps(), *image1) == []
