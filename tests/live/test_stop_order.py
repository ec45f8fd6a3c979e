"""The commit stop holds running threads for the shortest time: threads the kernel
shows running are interrupted last and resumed first; every thread is still
stopped before anything is checked or written, and none is left stopped or traced."""

import os

import pytest
from harness import Program

from hotpatch.process import ptrace as P
from hotpatch.process.threads import STOP_CHUNK, STOPPED, ThreadGroup, thread_name

pytestmark = pytest.mark.arm64

TARGET = Program("probe_threads.c", "-fPIE", "-pie")


def tids_of(pid):
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def test_running_threads_stop_last_and_resume_first(build, spawn, monkeypatch):
    t = spawn([build(TARGET), str(3 * STOP_CHUNK + 5)])   # several chunks of interrupts
    tids = tids_of(t.pid)
    assert len(tids) == 3 * STOP_CHUNK + 5
    probe = next(tid for tid in tids if thread_name(t.pid, tid) == "probe")
    interrupted, detached, stopped_before_detach = [], [], []
    real_interrupt, real_detach = P.interrupt_each, P.detach_each

    def interrupt_each(chunk):
        interrupted.extend(chunk)
        return real_interrupt(chunk)

    def detach_each(chunk):
        stopped_before_detach.extend(tid for tid, tr in group.tracees.items() if tr.state == STOPPED)
        detached.extend(chunk)
        real_detach(chunk)

    monkeypatch.setattr(P, "interrupt_each", interrupt_each)
    monkeypatch.setattr(P, "detach_each", detach_each)
    waiter = P.Waiter()
    group = ThreadGroup(t.pid, waiter)
    try:
        group.seize_all()
        group.stop_all(running_hint={probe})
        assert sorted(interrupted) == tids and interrupted[-1] == probe
        assert not group.running and len(group.tracees) == len(tids)
        group.detach_all()
    finally:
        waiter.close()
    assert detached[0] == probe and sorted(detached) == tids
    assert sorted(stopped_before_detach) == tids
    assert t.status("TracerPid") == "0"
    assert [tid for tid in tids if P.status_field(tid, "State")[0] in "tT"] == []   # none left stopped
    assert t.ask("calls 1").split()[1] == "1"
