"""A process in a frozen cgroup never reports a stop: hotpatch gives up after its
stop timeout with one line naming the likely cause, changes nothing, and the
process runs normally once thawed."""

import os
import time

import pytest
from harness import TIME_SCALE, Patch, Program, hotpatch

FREEZER = "/sys/fs/cgroup/freezer"
pytestmark = [pytest.mark.arm64, pytest.mark.skipif(not os.path.isdir(FREEZER), reason="no cgroup v1 freezer here")]

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_frozen_target(build, spawn):
    binary, patch = build(TARGET), build(FIX)
    t = spawn(binary)
    group = os.path.join(FREEZER, f"hotpatch-test-{t.pid}")
    os.mkdir(group)
    try:
        write(os.path.join(group, "cgroup.procs"), str(t.pid))
        maps = t.maps()
        write(os.path.join(group, "freezer.state"), "FROZEN")
        deadline = time.monotonic() + 10
        while open(os.path.join(group, "freezer.state")).read().strip() != "FROZEN":
            assert time.monotonic() < deadline
            time.sleep(0.01)   # the freezer has no event to wait on
        start = time.monotonic()
        r = hotpatch(str(t.pid), patch)
        elapsed = time.monotonic() - start
        assert r.returncode == 5, r.stderr
        assert r.stderr.count("\n") == 1 and "frozen" in r.stderr, r.stderr
        assert elapsed < 9 * TIME_SCALE, elapsed
        write(os.path.join(group, "freezer.state"), "THAWED")
        assert t.ask("compute 5") == "11"
        assert t.maps() == maps
        assert t.status("TracerPid") == "0"
    finally:
        write(os.path.join(group, "freezer.state"), "THAWED")
        write(os.path.join(FREEZER, "cgroup.procs"), str(t.pid))
        os.rmdir(group)
