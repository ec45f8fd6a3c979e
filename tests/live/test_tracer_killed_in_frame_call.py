"""SIGKILL of the tracer during the one function call hotpatch makes in a process (registering a patch's
unwind information with libgcc): the borrowed thread finishes the call, returns into a loop in the image
and parks there; the next run puts its registers back, learns from its journal that the frames are
registered, and deregisters them before it frees the image. Once, the thread returned into a trap and
died of SIGTRAP; and an image freed while libgcc still knew it would crash the next C++ exception."""

import subprocess
import sys
import time

import pytest
from harness import ROOT, TIME_SCALE, Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

CXX = Program("exceptions.cpp", "-lstdc++")
FIX = Patch("patch_exceptions.cpp", CXX)
POINTS = ("running", "returned", "marked")
# Applies in this process (no executor) and dies of SIGKILL at POINT of the registration call.
TRACER = """
import os, signal, sys
sys.path.insert(0, sys.argv[4])
from hotpatch.live import records
from hotpatch.ops.apply import apply
from hotpatch.process.threads import ThreadGroup
pid, patch, point = int(sys.argv[1]), sys.argv[2], sys.argv[3]
wait, interrupt, write_flags = ThreadGroup.wait_stepping, ThreadGroup.interrupt_running, records.write_flags
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def wait_stepping(self, tid, until):
    if point == "running":
        die()
    return wait(self, tid, until)
def interrupt_running(self, tid, deadline):
    status = interrupt(self, tid, deadline)
    if point == "returned":
        die()
    return status
def flags(record, mem):
    write_flags(record, mem)
    if point == "marked" and record.frames_registered:
        die()
ThreadGroup.wait_stepping, ThreadGroup.interrupt_running, records.write_flags = wait_stepping, interrupt_running, flags
apply(pid, patch)
print("not killed")
"""


@pytest.mark.parametrize("point", POINTS)
def test_tracer_killed_during_frame_registration(build, spawn, point):
    t = spawn(build(CXX))
    assert t.ask("check -1") == "caught negative"
    tracer = subprocess.run([sys.executable, "-c", TRACER, str(t.pid), build(FIX), point, ROOT],
                            capture_output=True, text=True, timeout=120 * TIME_SCALE)
    assert tracer.returncode == -9, tracer.stdout + tracer.stderr
    deadline, repaired = time.monotonic() + 20 * TIME_SCALE, ""
    while "registers are restored" not in repaired:   # the released thread returns into the loop, then parks
        assert time.monotonic() < deadline, repaired
        r = hotpatch("gc", str(t.pid))
        assert r.returncode == 0, r.stderr
        repaired += r.stderr
    assert "unwind information of patch 1 is registered" in repaired, repaired
    assert "rolled back" in repaired and "retired" not in repaired, repaired   # never committed: image freed
    assert "hotpatch" not in t.maps()
    assert (t.ask("check -1"), t.ask("pass -1"), t.ask("pass 3")) == ("caught negative", "caught negative", "ok 7")
    assert hotpatch(str(t.pid), build(FIX)).returncode == 0   # and it applies as if nothing had happened
    assert t.ask("check -1") == "caught patched negative"
