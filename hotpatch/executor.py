"""apply, revert and gc run in a child of their own session: the executor.

A SIGKILL of `hotpatch` (an operator's kill -9, `timeout -s KILL`, which
signals the whole process group) must never cut a transaction in the middle:
a thread left running injected registers, a return breakpoint armed, half
the jumps written. So the command the user ran only waits for the executor
and relays its exit code and the termination requests it receives. The
executor learns of that command's death through PR_SET_PDEATHSIG as a
SIGTERM: a termination request like any other, which rolls the transaction
back at its next safe point. The OOM killer is asked to spare it
(oom_score_adj -1000, where permitted): it is short-lived and its memory is
bounded.
"""

import ctypes
import os
import signal
import sys
from typing import Callable

from hotpatch import steps

PR_SET_PDEATHSIG = 1
RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ExecutorKilled(Exception):
    """The executor died of a signal: what it did is not known here."""

    def __init__(self, pid: int, sig: int):
        super().__init__(f"the executor (process {pid}) was killed by {signal.Signals(sig).name}")
        self.sig = sig


def run_detached(work: Callable[[], int]) -> int:
    """work() in the executor; its exit code. Termination requests are relayed to it."""
    parent = os.getpid()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        _executor(parent, ready_w, work)   # never returns
    os.close(ready_w)
    for sig in RELAYED:
        signal.signal(sig, lambda signum, frame: _relay(child, signum))
    if steps.requested() is not None:   # arrived between fork and the line above
        _relay(child, steps.requested())
    os.read(ready_r, 1)   # EOF once the executor has its own session and death signal
    os.close(ready_r)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        raise ExecutorKilled(child, os.WTERMSIG(status))
    return os.waitstatus_to_exitcode(status)


def _relay(child: int, sig: int) -> None:
    try:
        os.kill(child, sig)
    except ProcessLookupError:
        pass


def _executor(parent: int, ready_w: int, work: Callable[[], int]) -> None:
    code = 1
    try:
        os.setsid()   # out of the process group: a signal to the group reaches only the waiting command
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:   # it died before the death signal was set
            os.kill(os.getpid(), signal.SIGTERM)
        _spare_from_oom_killer()
        os.close(ready_w)
        code = work()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _spare_from_oom_killer() -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError:
        pass   # lowering it needs CAP_SYS_RESOURCE: an unprivileged user's executor stays as it is
