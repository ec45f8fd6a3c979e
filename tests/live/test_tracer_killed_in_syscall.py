"""SIGKILL of the tracer at each instant of a remote system call: the borrowed thread never runs on
borrowed registers. It makes the call, parks in a loop with its registers journaled, and the next run
(`hotpatch gc`) puts them back and unmaps the memory the call mapped (process/parking.py)."""

import os
import subprocess
import sys
import time

import pytest
from harness import ROOT, TIME_SCALE, Program, hotpatch

from hotpatch.process import inflight

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
POINTS = ("hijacked", "entered", "exited", "interrupted")
# Attaches, and dies of SIGKILL at POINT of one remote mmap (a page, r-x, like an image's).
TRACER = """
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from hotpatch.process.attach import attach, process_arch
from hotpatch.process.threads import ThreadGroup
pid, point = int(sys.argv[1]), sys.argv[2]
proc = attach(pid, process_arch(pid))
assert proc.remote().parking is not None, "no parking gadget found"
to_stop, to_interrupt, stops = ThreadGroup.syscall_stop, ThreadGroup.interrupt_stop, []
def syscall_stop(self, tid, deadline):
    if point == "hijacked":
        os.kill(os.getpid(), signal.SIGKILL)
    status = to_stop(self, tid, deadline)
    stops.append(status)
    if (point, len(stops)) in (("entered", 1), ("exited", 2)):
        os.kill(os.getpid(), signal.SIGKILL)
    return status
def interrupt_stop(self, tid, deadline, interrupt=True):
    status = to_interrupt(self, tid, deadline, interrupt)
    if point == "interrupted":
        os.kill(os.getpid(), signal.SIGKILL)
    return status
ThreadGroup.syscall_stop, ThreadGroup.interrupt_stop = syscall_stop, interrupt_stop
proc.syscall("mmap", 0, proc.page_size, 5, 0x22, (1 << 64) - 1, 0)
print("not killed")
"""


def marks(pid: int) -> list[str]:
    return [m for m in os.listdir(inflight.directory()) if m.startswith(f"{pid}-")]


def mappings(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        return [line.split()[0] for line in f]


@pytest.mark.parametrize("point", POINTS)
def test_tracer_killed_during_a_remote_syscall(build, spawn, point):
    t = spawn(build(TARGET))
    before = mappings(t.pid)
    tracer = subprocess.run([sys.executable, "-c", TRACER, str(t.pid), point, ROOT],
                            capture_output=True, text=True, timeout=60)
    assert tracer.returncode == -9, tracer.stdout + tracer.stderr
    assert marks(t.pid), "the killed run left no mark: the next run would not look for its thread"
    deadline = time.monotonic() + 10 * TIME_SCALE
    while mappings(t.pid) == before:            # released, the thread makes the call, then parks
        assert time.monotonic() < deadline, "the released thread never made its system call"
        time.sleep(0.01)
    assert t.alive()
    r = hotpatch("gc", str(t.pid))
    assert r.returncode == 0, r.stderr
    assert "registers are restored" in r.stderr and "unmarked image" in r.stderr, r.stderr
    assert mappings(t.pid) == before
    assert not marks(t.pid)                     # repaired: later runs do not look again
    assert t.ask("compute 5") == "11"           # the main thread runs its own code again
    deadline = time.monotonic() + 10 * TIME_SCALE
    while not t.status("State").startswith("S"):   # back to blocking on stdin, not spinning in the loop
        assert time.monotonic() < deadline, t.status("State")
        time.sleep(0.01)


# Two calls in a row on a held thread (as an image is mapped, then protected): between them it waits at
# the exit of the first, in the parking gadget. Dies of SIGKILL there ("between"), or once the second
# is set up on it ("next-hijacked").
HELD_TRACER = """
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from hotpatch.live import records
from hotpatch.process.attach import attach, process_arch
from hotpatch.process.threads import ThreadGroup
pid, point = int(sys.argv[1]), sys.argv[2]
proc = attach(pid, process_arch(pid))
assert proc.remote().parking is not None, "no parking gadget found"
page, calls = proc.page_size, []
to_stop = ThreadGroup.syscall_stop
def syscall_stop(self, tid, deadline):
    if point == "next-hijacked" and len(calls) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return to_stop(self, tid, deadline)
ThreadGroup.syscall_stop = syscall_stop
with proc.syscall_thread_held():
    base = proc.syscall("mmap", 0, page, 5, 0x22, (1 << 64) - 1, 0,
                        mark=lambda got: proc.mem.write(got, records.pending_header(1, page)))
    calls.append(base)
    if point == "between":
        os.kill(os.getpid(), signal.SIGKILL)
    proc.syscall("mprotect", base, page, 1)
print("not killed")
"""


@pytest.mark.parametrize("point", ("between", "next-hijacked"))
def test_tracer_killed_between_two_calls_on_a_held_thread(build, spawn, point):
    t = spawn(build(TARGET))
    before = mappings(t.pid)
    tracer = subprocess.run([sys.executable, "-c", HELD_TRACER, str(t.pid), point, ROOT],
                            capture_output=True, text=True, timeout=60)
    assert tracer.returncode == -9, tracer.stdout + tracer.stderr
    assert marks(t.pid)
    deadline = time.monotonic() + 10 * TIME_SCALE
    while t.status("State").startswith("S"):    # released, it returns into the parking loop and spins
        assert time.monotonic() < deadline, "the released thread is not parked"
        time.sleep(0.01)
    assert mappings(t.pid) != before            # the first call's page, marked pending
    r = hotpatch("gc", str(t.pid))
    assert r.returncode == 0, r.stderr
    assert "registers are restored" in r.stderr and "unfilled image" in r.stderr, r.stderr
    assert mappings(t.pid) == before            # the page the first call mapped is gone too
    assert not marks(t.pid)
    assert t.ask("compute 5") == "11"
    deadline = time.monotonic() + 10 * TIME_SCALE
    while not t.status("State").startswith("S"):
        assert time.monotonic() < deadline, t.status("State")
        time.sleep(0.01)
