"""A mark on the host while a run borrows a process's threads: the next run looks for parked threads
only after a run that left its mark behind.

Finding a parked thread (process/parking.py) means stopping each running
thread once, a pause each would feel on every apply. A parked thread exists
only if a run died (or gave up on a frozen thread) while it had borrowed
it, and such a run cannot remove its mark: a file named after the process
(its pid and start time, so a reused pid does not match) and the run's own
pid, in /run/hotpatch (root) or the user's runtime directory. Where no mark
can be kept, every run looks.
"""

import contextlib
import os

from hotpatch.process.threads import stat_after_comm


def directory() -> str:
    if os.geteuid() == 0:
        return "/run/hotpatch"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/hotpatch-{os.geteuid()}"
    return os.path.join(runtime, "hotpatch")


def _process_key(pid: int) -> str | None:
    """pid and start time (field 22 of /proc/PID/stat): one process, never a later one with its pid."""
    fields = stat_after_comm(f"/proc/{pid}/stat")
    return None if fields is None else f"{pid}-{int(fields.split()[19])}"


def left_behind(pid: int) -> list[str] | None:
    """Marks of runs on `pid` that are no longer running; None when that cannot be known (look anyway)."""
    key = _process_key(pid)
    try:
        names = os.listdir(directory())
    except FileNotFoundError:
        return []
    except OSError:
        return None
    if key is None:
        return None
    out = []
    for name in names:
        stem, _, run = name.rpartition(".")
        if stem == key and run.isdigit() and not _running(int(run)):
            out.append(os.path.join(directory(), name))
    return out


def forget(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"hotpatch" in f.read()
    except OSError:
        return False


def make(pid: int) -> str | None:
    """Mark a run borrowing threads of `pid` (before the first is borrowed); the mark's path, or None."""
    key = _process_key(pid)
    if key is None:
        return None
    path = os.path.join(directory(), f"{key}.{os.getpid()}")
    try:
        try:
            _create(path)
        except FileNotFoundError:   # the first mark since boot (the directory is made only then)
            os.makedirs(directory(), mode=0o700, exist_ok=True)
            _create(path)
    except OSError:
        return None   # nowhere to keep it: the next run only finds what a directory it can read says
    return path


def _create(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
