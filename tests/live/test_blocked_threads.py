"""Threads blocked in read() and nanosleep() keep working across apply and revert:
the read returns the bytes sent later, the sleep lasts its full time.

The sleep starts while hotpatch is held just before its stop (HOTPATCH_PAUSE_AT),
so the stop surely lands inside it, however slow the machine."""

import time

import pytest
from harness import ARCH, TIME_SCALE, Patch, Program, paused

pytestmark = pytest.mark.arm64

TARGET = Program("blocking.c", "-fPIE", "-pie")
FIX = Patch("patch_work.c", TARGET)
SLEEP_MS = 1500
# glibc's nanosleep() is the clock_nanosleep system call; the echo thread waits in read().
NR = {"x86_64": {"read": 0, "clock_nanosleep": 230}, "aarch64": {"read": 63, "clock_nanosleep": 115}}[ARCH]


def sleep_during(t, operation: str, pause_at: str, patch_args: tuple) -> tuple[int, int]:
    """Start a sleep while hotpatch waits just before its stop; (rc, ms) the sleep reports."""
    with paused(*patch_args, at=pause_at):
        t.send(f"sleep {SLEEP_MS}")
        assert t.readline() == "sleeping"
        deadline = time.monotonic() + 10 * TIME_SCALE   # nanosleep follows the line: wait to see it entered
        while sorted(t.syscalls().values()) != sorted([NR["read"], NR["clock_nanosleep"]]):
            assert time.monotonic() < deadline, t.syscalls()
            time.sleep(0.01)   # the kernel's view has no event to wait on
    assert not t.has_line(), f"the sleep ended before {operation} did: the stop missed it"
    rc, elapsed = t.readline(timeout=SLEEP_MS / 1000 + 20 * TIME_SCALE).split()[1:]
    return int(rc), int(elapsed)


def test_blocked_read_and_nanosleep(build, spawn):
    t = spawn(build(TARGET))
    assert t.ask("hello") == "echo hello 8"
    rc, elapsed = sleep_during(t, "apply", "apply:filled", (str(t.pid), build(FIX)))
    assert rc == 0 and SLEEP_MS <= elapsed < 2 * SLEEP_MS, (rc, elapsed)
    assert t.ask("after") == "echo after 1007"   # read() restarted and got the new line

    rc, elapsed = sleep_during(t, "revert", "revert:stopping", ("revert", str(t.pid)))
    assert rc == 0 and SLEEP_MS <= elapsed < 2 * SLEEP_MS, (rc, elapsed)
    assert t.ask("reverted") == "echo reverted 8"
