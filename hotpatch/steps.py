"""The named steps of apply and revert: timings, test hooks, termination requests.

SIGINT, SIGTERM and SIGHUP only set a flag; it takes effect at the next step
boundary (or while waiting on the kernel), where the transaction rolls back
in the normal flow. An exception raised asynchronously could land inside an
undo action; a flag cannot.

Test hooks, both naming a step as OPERATION:STEP (e.g. apply:mapped):
  HOTPATCH_FAULT     fail there, as an error would
  HOTPATCH_PAUSE_AT  print "hotpatch: paused at STEP" on stderr and wait for a line on stdin
                     (with HOTPATCH_PAUSE_PID, only in the transaction on that process: one of many
                     of apply --all-processes)
"""

import os
import signal
import sys
import time

from hotpatch.errors import InjectedFault, Interrupted

_requested: int | None = None


def _on_signal(signum, frame) -> None:
    global _requested
    _requested = signum


def install_termination_handlers() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def requested() -> int | None:
    """The termination request received so far, if any."""
    return _requested


def check_interrupted() -> None:
    if _requested is not None:
        raise Interrupted(f"interrupted by {signal.Signals(_requested).name}")


class Steps:
    def __init__(self, operation: str, pid: int | None = None):
        self.operation = operation
        self.marks: dict[str, float] = {}
        self.start = time.perf_counter()
        self.fault = os.environ.get("HOTPATCH_FAULT")
        self.pause = os.environ.get("HOTPATCH_PAUSE_AT")
        if os.environ.get("HOTPATCH_PAUSE_PID", str(pid)) != str(pid):
            self.pause = None

    def mark(self, name: str, abortable: bool = True, hooks: bool | None = None) -> None:
        """Record the time of a step; where abortable, honour termination requests; where hooks
        (by default where abortable), the test hooks."""
        self.marks[name] = round((time.perf_counter() - self.start) * 1000, 3)
        if hooks if hooks is not None else abortable:
            step = f"{self.operation}:{name}"
            if self.pause == step:
                sys.stderr.write(f"hotpatch: paused at {step}\n")
                sys.stderr.flush()
                sys.stdin.readline()
            if self.fault == step:
                raise InjectedFault(f"fault injected at {step}")
        if abortable:
            check_interrupted()
