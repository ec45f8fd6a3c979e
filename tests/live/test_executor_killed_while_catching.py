"""SIGKILL of the executor while a thread is being caught as it leaves (a return breakpoint armed in
it, the process running): the breakpoint is a perf event that dies with the executor, so the thread
later returns through that address and lives. A ptrace hardware breakpoint (debug registers), which the
kernel keeps after its tracer dies, killed it there with SIGTRAP. A normal catch still works after."""

import os
import signal
import time

import pytest
from harness import TIME_SCALE, Patch, Program, children_of, hotpatch_popen, paused

pytestmark = pytest.mark.arm64

WORKER = Program("gate.c")
FIX = Patch("patch_gated.c", WORKER)
AT = "apply:catching"


def passes(t, expected: str) -> None:
    """Ask the worker's counts until they read `expected`: the process's own word, no sleep."""
    deadline = time.monotonic() + 10 * TIME_SCALE
    while (got := t.ask("passes")) != expected:
        assert time.monotonic() < deadline, got
        time.sleep(0.01)


def test_executor_killed_with_a_return_breakpoint_armed(build, spawn):
    t = spawn(build(WORKER))
    fix = build(FIX)
    p = hotpatch_popen(str(t.pid), fix, "--timeout", "60", env={"HOTPATCH_PAUSE_AT": AT})
    line = p.stderr.readline().strip()
    assert line == f"hotpatch: paused at {AT}", line + p.stderr.read()
    executors = children_of(p.pid)
    assert executors, "no executor"
    for pid in executors:
        os.kill(pid, signal.SIGKILL)
    out, err = p.communicate(timeout=30 * TIME_SCALE)
    assert p.returncode == 7, err
    deadline = time.monotonic() + 10 * TIME_SCALE
    while t.status("TracerPid") != "0":
        assert time.monotonic() < deadline, "still traced"
        time.sleep(0.01)
    assert t.ask("open") == "ok"     # the worker returns through the address the breakpoint was on
    passes(t, "1 0")
    assert t.alive()

    with paused(str(t.pid), fix, "--timeout", "60", at=AT):
        assert t.ask("open") == "ok"   # caught as it leaves, the patch committed
    assert t.ask("open") == "ok"
    passes(t, "2 1")                   # the next pass runs the patched gated()
    assert t.alive() and t.status("TracerPid") == "0"
