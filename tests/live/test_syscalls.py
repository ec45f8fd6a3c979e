"""Threads blocked in accept, futex, clock_nanosleep (absolute) and epoll_wait keep
working across apply and revert, and a SIGCHLD arriving while every thread is
stopped is delivered."""

import os
import signal
import socket
import time

import pytest
from harness import ARCH, TIME_SCALE, Patch, Program, hotpatch, paused

pytestmark = pytest.mark.arm64

TARGET = Program("syscalls.c", "-fPIE", "-pie")
FIX = Patch("patch_work.c", TARGET)
NR_CLOCK_NANOSLEEP = {"x86_64": 230, "aarch64": 115}[ARCH]
WOKEN = ("accepted", "cond woke", "epoll", "slept")   # what the blocked threads print, whenever they wake


class Lines:
    """Answers of the main thread, apart from what the other threads print when they wake."""

    def __init__(self, t):
        self.t, self.woken = t, []

    def next_answer(self) -> str:
        while (line := self.t.readline()).startswith(WOKEN):
            self.woken.append(line)
        return line

    def ask(self, text: str) -> str:
        self.t.send(text)
        return self.next_answer()


def test_blocked_syscalls_and_sigchld(build, spawn):
    t = spawn([build(TARGET), str(int(2 * TIME_SCALE))], ready_prefix=None)
    lines = Lines(t)
    ready, port, child = lines.next_answer().split()
    assert ready == "ready"
    port, child = int(port), int(child)
    deadline = time.monotonic() + 10 * TIME_SCALE   # the sleeper enters its sleep after "ready"
    while NR_CLOCK_NANOSLEEP not in t.syscalls().values():
        assert time.monotonic() < deadline, t.syscalls()
        time.sleep(0.01)   # the kernel's view has no event to wait on
    # hold apply with every thread stopped, make the child exit, then let it go on
    with paused(str(t.pid), build(FIX), at="apply:checked"):
        assert not t.has_line()        # no thread has woken: the sleeper is held inside its sleep
        os.kill(child, signal.SIGKILL)
    assert lines.ask("work 1") == "1001"
    assert lines.ask("chld") == "chld 1 reaped 1"
    assert hotpatch("revert", str(t.pid)).returncode == 0

    # every blocked thread still does its job
    with socket.create_connection(("127.0.0.1", port)):
        pass
    t.send("signal")
    t.send("event")
    assert lines.ask("work 1") == "2"
    while len(lines.woken) < 4:
        lines.woken.append(t.readline())
    assert sorted(lines.woken) == ["accepted 1", "cond woke", "epoll n=1", "slept rc=0 late_ms_nonneg=1"]
