"""A process frozen by the cgroup v2 freezer while its thread was resumed for a remote system call:
the call cannot finish and the thread cannot be given its registers back. It is never left to run
borrowed registers into a crash: once thawed it makes the call, parks in the loop, and the next run
puts it back and unmaps what the call mapped. The failure says so, in one line."""

import os
import subprocess
import sys

import pytest
from harness import ROOT, TIME_SCALE, Patch, Program, freeze, hotpatch, write

pytestmark = pytest.mark.arm64
TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)
# `hotpatch PID PATCH`, with the process's cgroup frozen just as the first remote call is resumed.
COMMAND = """
import sys, time
sys.path.insert(0, sys.argv[1])
from hotpatch import cli
from hotpatch.process.threads import ThreadGroup
group, to_stop = sys.argv[2], ThreadGroup.syscall_stop
def syscall_stop(self, tid, deadline):
    with open(group + "/cgroup.freeze", "w") as f:
        f.write("1")
    while "frozen 1" not in open(group + "/cgroup.events").read():
        time.sleep(0.01)
    return to_stop(self, tid, deadline)
ThreadGroup.syscall_stop = syscall_stop
sys.exit(cli.main(sys.argv[3:]))
"""


def test_frozen_during_a_remote_call(build, spawn, v2_group):
    t = spawn(build(TARGET))
    write(os.path.join(v2_group, "cgroup.procs"), str(t.pid))
    before = t.maps()
    r = subprocess.run([sys.executable, "-c", COMMAND, ROOT, v2_group, str(t.pid), build(FIX)],
                       capture_output=True, text=True, timeout=120 * TIME_SCALE)
    assert r.returncode == 5, r.stderr
    assert "waits parked in a loop" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    freeze(v2_group, False)
    tries = 0
    while True:   # thawed, the thread makes the call and parks: the next run finds it there
        g = hotpatch("gc", str(t.pid))
        assert g.returncode == 0, g.stderr
        if "registers are restored" in g.stderr:
            break
        tries += 1
        assert tries < 50 * TIME_SCALE, g.stderr
    assert "unmarked image" in g.stderr or "unfilled image" in g.stderr, g.stderr
    assert t.maps() == before
    assert t.ask("compute 5") == "11"
    assert hotpatch(str(t.pid), build(FIX)).returncode == 0
    assert t.ask("compute 5") == "51"
