"""A target stopped with SIGSTOP is patched and stays stopped; after SIGCONT it runs the new code."""

import os
import signal
import time

from conftest import hotpatch


def state_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(l for l in f if l.startswith("State:")).split()[1]


def wait_state(pid, want, timeout=10):
    deadline = time.monotonic() + timeout
    while state_of(pid) != want:
        assert time.monotonic() < deadline, state_of(pid)
        time.sleep(0.01)    # polling the kernel's view: no event exists for "became stopped"


def test_stopped_target_stays_stopped(cc, spawn):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn(binary)
    os.kill(t.pid, signal.SIGSTOP)
    wait_state(t.pid, "T")
    r = hotpatch(str(t.pid), patch)
    assert r.returncode == 0, r.stderr
    assert state_of(t.pid) == "T"
    os.kill(t.pid, signal.SIGCONT)
    assert t.ask("compute 5") == "51"
