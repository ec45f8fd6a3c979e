"""No mapping is ever writable and executable at once: the process's maps are read
while apply is held at each step (HOTPATCH_PAUSE_AT), and after; the image is
there at each step, with its final permissions from the moment it is mapped."""

import json

import pytest
from harness import Patch, Program, assert_no_wx, hotpatch, image_of, mappings_in, paused

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)
STEPS = ["mapped", "filled", "stopped", "checked", "first-switched", "switched"]


def test_never_wx(build, spawn):
    t = spawn(build(TARGET))
    patch = build(FIX)
    for step in STEPS:
        with paused(str(t.pid), patch, "--json", at=f"apply:{step}") as p:
            maps = t.maps()
            assert_no_wx(maps)
        image = mappings_in(maps, *image_of(json.loads(p.out)))
        assert [m.split()[1] for m in image] == ["r--p", "r-xp", "rw-p"], (step, image)
        assert_no_wx(t.maps())
        assert t.ask("compute 5") == "51"
        assert hotpatch("revert", str(t.pid)).returncode == 0
        assert t.ask("compute 5") == "11"
