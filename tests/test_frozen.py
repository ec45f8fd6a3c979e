"""A target in a frozen cgroup never reports a stop: hotpatch gives up after its
stop timeout with one line naming the likely cause, changes nothing, and the
target runs normally once thawed."""

import os
import time

import pytest

from conftest import hotpatch

FREEZER = "/sys/fs/cgroup/freezer"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


@pytest.mark.skipif(not os.path.isdir(FREEZER), reason="no cgroup v1 freezer here")
def test_frozen_target(cc, spawn):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
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
        assert elapsed < 9, elapsed
        write(os.path.join(group, "freezer.state"), "THAWED")
        assert t.ask("compute 5") == "11"
        assert t.maps() == maps
        with open(f"/proc/{t.pid}/status") as f:
            assert "TracerPid:\t0" in f.read()
    finally:
        write(os.path.join(group, "freezer.state"), "THAWED")
        write(os.path.join(FREEZER, "cgroup.procs"), str(t.pid))
        os.rmdir(group)
