"""Real-time signals with payloads, sent without pause during apply and revert,
are each delivered exactly once with their payload."""

import ctypes
import subprocess
import sys
import threading

from conftest import ROOT

libc = ctypes.CDLL(None, use_errno=True)
SIGRTMIN = libc.__libc_current_sigrtmin()


class sigval(ctypes.Union):
    _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]


def test_rt_signals_delivered_once(cc, spawn):
    binary = cc.program("signals.c", "-fPIE", "-pie")
    patch = cc.patch("patch_work.c", binary)
    t = spawn(binary)
    sent = []
    stop = threading.Event()

    def sender():
        # A flood, as fast as the queue takes them: signals then arrive during
        # every remote syscall and every stop, not only between them.
        i = 0
        while not stop.is_set():
            if libc.sigqueue(t.pid, SIGRTMIN + 1, sigval(i + 1)) == 0:
                i += 1
                sent.append(i)

    for command in (["apply", str(t.pid), patch], ["revert", str(t.pid)]) * 3:
        stop.clear()
        thread = threading.Thread(target=sender)
        thread.start()
        r = subprocess.run([sys.executable, "-m", "hotpatch", *command], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
        stop.set()
        thread.join()
        assert r.returncode == 0, r.stderr
    assert len(sent) > 1000
    count, total = map(int, t.ask("stats").split())
    assert (count, total) == (len(sent), sum(sent))
    with open(f"/proc/{t.pid}/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    assert int(status["SigBlk"], 16) == 0      # no handler left half-run with its signal blocked
    assert t.ask("work 1") == "2"
