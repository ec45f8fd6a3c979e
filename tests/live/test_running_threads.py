"""The kernel's view of which threads are running: a spinning probe is, threads blocked in
fgets or pthread_cond_wait are not (what orders the commit stop)."""

import os
import time

import pytest
from harness import TIME_SCALE, Program

from hotpatch.process.threads import running_threads, thread_name

pytestmark = pytest.mark.arm64

TARGET = Program("probe_threads.c", "-fPIE", "-pie")


def tids_of(pid):
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def test_running_threads_are_those_at_work(build, spawn):
    t = spawn([build(TARGET), "40"])     # main blocked in fgets, a spinning probe, 38 in pthread_cond_wait
    tids = tids_of(t.pid)
    assert len(tids) == 40
    probe = next(tid for tid in tids if thread_name(t.pid, tid) == "probe")
    # "ready" comes before every idle thread has reached pthread_cond_wait:
    # wait for them to block (each does so once, for good).
    deadline = time.monotonic() + 10 * TIME_SCALE
    while (seen := running_threads(t.pid, tids)) != {probe}:
        assert probe in seen and time.monotonic() < deadline, seen
        time.sleep(0.01)   # the kernel's view has no event to wait on
    assert running_threads(t.pid, tids) == {probe}    # and it stays so
