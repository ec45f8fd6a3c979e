"""Real-time signals with payloads, sent without pause during apply and revert,
are each delivered exactly once with their payload."""

import ctypes
import threading
import time

import pytest
from harness import ARCH, Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("signals.c", "-fPIE", "-pie")
FIX = Patch("patch_work.c", TARGET)
# The emulated ARM64 guest has two slow CPUs: a flood from Python would starve hotpatch.
PAUSE, CYCLES, AT_LEAST = {"x86_64": (0, 3, 1000), "aarch64": (0.0005, 1, 10)}[ARCH]

libc = ctypes.CDLL(None, use_errno=True)
SIGRTMIN = libc.__libc_current_sigrtmin()


class sigval(ctypes.Union):
    _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]


def test_rt_signals_delivered_once(build, spawn):
    t = spawn(build(TARGET))
    patch = build(FIX)
    sent = []
    stop = threading.Event()

    def sender():
        # As fast as the queue takes them: signals then arrive during every
        # remote syscall and every stop, not only between them.
        while not stop.is_set():
            if libc.sigqueue(t.pid, SIGRTMIN + 1, sigval(len(sent) + 1)) == 0:
                sent.append(len(sent) + 1)
            if PAUSE:
                time.sleep(PAUSE)

    for command in (["apply", str(t.pid), patch], ["revert", str(t.pid)]) * CYCLES:
        stop.clear()
        thread = threading.Thread(target=sender)
        thread.start()
        try:
            r = hotpatch(*command)
        finally:
            stop.set()
            thread.join()
        assert r.returncode == 0, r.stderr
    assert len(sent) > AT_LEAST
    count, total = map(int, t.ask("stats").split())
    assert (count, total) == (len(sent), sum(sent))
    assert int(t.status("SigBlk"), 16) == 0      # no handler left half-run with its signal blocked
    assert t.ask("work 1") == "2"
