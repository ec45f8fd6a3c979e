"""A process stopped with SIGSTOP is patched and stays stopped; after SIGCONT it runs the new code."""

import os
import signal
import time

import pytest
from harness import TIME_SCALE, Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def wait_state(t, want, timeout=10 * TIME_SCALE):
    deadline = time.monotonic() + timeout
    while t.status("State")[0] != want:
        assert time.monotonic() < deadline, t.status("State")
        time.sleep(0.01)    # polling the kernel's view: no event exists for "became stopped"


def test_stopped_target_stays_stopped(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    os.kill(t.pid, signal.SIGSTOP)
    wait_state(t, "T")
    r = hotpatch(str(t.pid), build(FIX))
    assert r.returncode == 0, r.stderr
    assert t.status("State")[0] == "T"
    assert t.status("TracerPid") == "0"
    os.kill(t.pid, signal.SIGCONT)
    assert t.ask("compute 5") == "51"
