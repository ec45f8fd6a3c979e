"""Threads blocked in accept, futex, clock_nanosleep (absolute) and epoll_wait keep
working across apply and revert, and a SIGCHLD arriving while every thread is
stopped is delivered."""

import os
import signal
import socket
import subprocess
import sys

from conftest import ROOT


def test_blocked_syscalls_and_sigchld(cc, spawn):
    binary = cc.program("syscalls.c", "-fPIE", "-pie")
    patch = cc.patch("patch_work.c", binary)
    t = spawn(binary, ready_prefix=None)
    ready, port, child = t.readline().split()
    assert ready == "ready"
    port, child = int(port), int(child)
    # hold apply with every thread stopped, make the child exit, then let it go on
    p = subprocess.Popen([sys.executable, "-m", "hotpatch", str(t.pid), patch], cwd=ROOT, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={"HOTPATCH_PAUSE_AT": "apply:checked", "PATH": "/usr/bin:/bin"})
    assert p.stderr.readline().strip() == "hotpatch: paused at apply:checked"
    os.kill(child, signal.SIGKILL)
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.wait(timeout=60) == 0, p.stderr.read()
    assert t.ask("work 1") == "1001"
    assert t.ask("chld") == "chld 1 reaped 1"
    assert subprocess.run([sys.executable, "-m", "hotpatch", "revert", str(t.pid)], cwd=ROOT).returncode == 0

    # every blocked thread still does its job
    with socket.create_connection(("127.0.0.1", port)):
        pass
    t.send("signal")
    t.send("event")
    lines = sorted(t.readline() for _ in range(4))
    assert lines == ["accepted 1", "cond woke", "epoll n=1", "slept rc=0 late_ms_nonneg=1"], lines
    assert t.ask("work 1") == "2"
