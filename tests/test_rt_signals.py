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
        i = 0
        while not stop.is_set() and i < 20000:
            i += 1
            if libc.sigqueue(t.pid, SIGRTMIN + 1, sigval(i)) == 0:
                sent.append(i)
            elif ctypes.get_errno() == 11:   # EAGAIN: queue full, let the target drain
                i -= 1

    for command in (["apply", str(t.pid), patch], ["revert", str(t.pid)]):
        stop.clear()
        thread = threading.Thread(target=sender)
        thread.start()
        r = subprocess.run([sys.executable, "-m", "hotpatch", *command], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
        stop.set()
        thread.join()
        assert r.returncode == 0, r.stderr
    assert len(sent) > 10
    count, total = map(int, t.ask("stats").split())
    assert (count, total) == (len(sent), sum(sent))
    assert t.ask("work 1") == "2"
