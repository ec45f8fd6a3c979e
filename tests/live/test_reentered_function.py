"""A function that is left and re-entered at once (a worker sleeping in it 0.3 s at a time) is replaced:
polling never finds the worker outside, so it is caught as it returns, by a hardware breakpoint on its
return address in that thread only; revert the same way. The process keeps running, untraced."""

import json
import time

import pytest
from harness import TIME_SCALE, Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

WORKER = Program("reenter.c")
FIX = Patch("patch_slow.c", WORKER)


def calls(t) -> tuple[int, int]:
    old, new = t.ask("calls").split()
    return int(old), int(new)


def until(t, done, seconds: float = 10) -> tuple[int, int]:
    """Ask the worker's counts until done(counts): each answer is the process's own word, no sleep."""
    deadline = time.monotonic() + seconds * TIME_SCALE
    while not done(counts := calls(t)):
        assert time.monotonic() < deadline, counts
    return counts


def test_caught_as_it_leaves(build, spawn):
    t = spawn(build(WORKER))
    r = hotpatch(str(t.pid), build(FIX), "--timeout", "10", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["checks"] >= 3          # polling found it inside, then it was caught
    old = calls(t)[0]
    assert until(t, lambda c: c[1] >= 2)[0] in (old, old + 1)   # the new slow() runs, the old no more
    r = hotpatch("revert", str(t.pid), "--timeout", "10", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    new = calls(t)[1]
    assert until(t, lambda c: c[0] >= old + 3)[1] in (new, new + 1)
    assert t.status("TracerPid") == "0" and t.alive()
