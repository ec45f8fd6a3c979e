"""When is it safe: stop every thread, check, and either act or let the process run and retry.

The kernel's livepatch transition in userspace form: each attempt stops every
thread and asks the activeness check why a thread is not safe (a value, like
the kernel's -EBUSY); between attempts the process runs, so a busy thread
never holds the others. The caller acts while every thread is stopped and
then resumes or detaches them itself: the commit point stays in its code.
"""

import gc
import time

from hotpatch.errors import ProcessBusy
from hotpatch.live.unwinding import WALK_BUDGET, Stacks, Survey
from hotpatch.process.attach import Process
from hotpatch.process.maps import MapIndex, Mapping
from hotpatch.safety.activeness import BusyThread, RangeSet, find_busy
from hotpatch.steps import Steps

FIRST_DELAY, MAX_DELAY = 0.001, 0.05
NO_LIMIT = 1 << 30
CATCH_AFTER = 3   # checks finding the same thread in the same frames before it is caught as it leaves


def check(proc: Process, maps: MapIndex, ranges: RangeSet, stacks: Stacks | None,
          budget: int = WALK_BUDGET) -> BusyThread | Survey | None:
    """With every thread stopped: the first thread inside `ranges`, or None when all are safe.

    With `stacks`, by real frames (candidates of the word scan unwound; a
    Survey when too many need unwinding inside one stop); without, by the
    word scan alone (conservative: a stale word is busy).
    """
    snapshot = proc.snapshot(maps)
    return stacks.find_busy(snapshot, ranges, budget) if stacks is not None else find_busy(snapshot, ranges)


def stop_when_safe(proc: Process, ranges: RangeSet, timeout: float, steps: Steps, stacks: Stacks | None = None,
                   maps: list[Mapping] | None = None) -> int:
    """Return with every thread stopped and none inside `ranges`; the number of attempts.

    `maps`: the process's maps as the caller read them (else they are read
    here); they may predate the stop, as Process.snapshot allows: a thread
    whose stack they do not show has them read again.
    Raises ProcessBusy (threads resumed) when a thread is still inside at
    the deadline, with its backtrace.
    """
    # No garbage collection inside a stop: the tables read before it (CFI,
    # symbols) make a full collection long enough to show in the pause.
    gc.disable()
    try:
        return _stop_when_safe(proc, ranges, timeout, steps, stacks, maps)
    finally:
        gc.enable()


def _stop_when_safe(proc: Process, ranges: RangeSet, timeout: float, steps: Steps, stacks: Stacks | None,
                    read: list[Mapping] | None) -> int:
    deadline = time.monotonic() + timeout
    delay, attempts = FIRST_DELAY, 0
    maps = MapIndex(read if read is not None else proc.maps())
    proc.prepare_snapshot()
    last, same = None, 0
    while True:
        attempts += 1
        running = proc.running_threads()   # read while the process runs, not in the stop
        steps.mark("stopping")
        proc.stop_all(running)
        steps.mark("stopped")
        last_chance = time.monotonic() + delay >= deadline   # then every walk is done inside this stop
        busy = check(proc, maps, ranges, stacks, NO_LIMIT if last_chance else WALK_BUDGET)
        steps.mark("checked")
        if busy is None:
            return attempts
        if isinstance(busy, Survey):
            proc.resume_all()
            stacks.survey(busy.tids, maps, ranges)   # while the process runs; the next stop reuses it
            continue
        same = same + 1 if (busy.tid, busy.catch_at) == last else 1
        last = (busy.tid, busy.catch_at)
        if time.monotonic() + delay >= deadline:
            proc.resume_all()
            raise busy_error(proc, busy, stacks, timeout, attempts)
        if same >= CATCH_AFTER and busy.catch_at is not None and catch_leaving(proc, busy, deadline, steps):
            continue   # it is held outside them: stop the others and check again, at once
        proc.resume_all()
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY)


def catch_leaving(proc: Process, busy: BusyThread, deadline: float, steps: Steps) -> bool:
    """A thread that polling keeps finding inside: stop it as it returns from the outermost guarded frame.

    A hardware execution breakpoint on that return address, in that thread
    only (no code is modified, no other thread disturbed), while the process
    runs; True when it fired (the thread is held there). The breakpoint is
    disarmed on every path: left armed, it would trap with no tracer (and if
    hotpatch is killed meanwhile, the kernel removes it: process/perfbp.py).
    """
    if not proc.catch(busy.tid, busy.catch_at):
        return False   # no slot, or the kernel refused: keep polling
    caught = False
    try:
        proc.resume_all()
        steps.mark("catching")
        caught = proc.wait_caught(busy.tid, deadline)
    finally:
        with proc.uninterruptible():   # a termination request must not leave it armed
            if not caught and busy.tid in proc.thread_ids():
                proc.stop_thread(busy.tid)
            proc.release_catch(busy.tid)
    return caught


def busy_error(proc: Process, busy: BusyThread, stacks: Stacks | None, timeout: float, attempts: int) -> ProcessBusy:
    """The refusal, with the evidence: the thread, what it is in, and its backtrace in symbol names."""
    name = proc.thread_name(busy.tid)
    backtrace = stacks.backtrace(busy) if stacks is not None and busy.frames else []
    chain = f": {' <- '.join(backtrace)}" if backtrace else ""
    return ProcessBusy(
        f"thread {busy.tid} ({name}) {busy.how} {busy.label} (at {busy.address:#x}){chain}; "
        f"still busy after {timeout:g} s ({attempts} checks)",
        "retry when the process is idle or raise --timeout; a function that never returns "
        "(a thread's main loop) can never be replaced",
        {"busy": {"tid": busy.tid, "thread": name, "function": busy.label, "how": busy.how,
                  "address": hex(busy.address), "backtrace": backtrace}})
