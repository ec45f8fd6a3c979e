"""A transaction on a live process: undo actions, run newest first on failure.

Each undo runs even if another fails; the undo itself is never cut short by a
termination request. A failure to undo is its own error (UndoFailed, exit 7):
the process may be damaged and the user must know.
"""

from typing import Callable

from hotpatch.errors import HotpatchError, ProcessGone, UndoFailed
from hotpatch.process.attach import Process


class Transaction:
    def __init__(self):
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def on_undo(self, what: str, action: Callable[[], None]) -> None:
        self._undo.append((what, action))

    def commit(self) -> None:
        """From here the change stands: nothing undoes it."""
        self._undo.clear()

    def rollback(self) -> list[str]:
        failures = []
        while self._undo:
            what, action = self._undo.pop()
            try:
                action()
            except BaseException as e:  # keep undoing: one failure must not strand the rest
                failures.append(f"{what}: {e}")
        return failures

    def abort(self, proc: Process, error: BaseException) -> None:
        """Undo everything after `error`; raise what the user must be told instead of it, if anything."""
        try:
            self._abort(proc, error)
        except HotpatchError as raised:
            say_left_parked(proc, raised)
            raise
        say_left_parked(proc, error)

    def _abort(self, proc: Process, error: BaseException) -> None:
        if not proc.alive():
            self.commit()
            raise ProcessGone(f"process {proc.pid} exited during the operation; nothing left to undo") from error
        with proc.uninterruptible():
            failures = self.rollback()
        if failures:
            raise UndoFailed(f"{_message(error)}; and undoing failed: {'; '.join(failures)}",
                             "the process may be damaged: check it") from error


def _message(e: BaseException) -> str:
    return e.line() if isinstance(e, HotpatchError) else f"{type(e).__name__}: {e}"


def say_left_parked(proc: Process, error: BaseException) -> None:
    """Add to the error what became of a thread whose registers could not be given back."""
    for tid, parked in sorted(proc.remote_left_parked()):
        note = (f"; thread {tid} could not be given its registers back (frozen?): it waits parked in a loop, "
                f"and `hotpatch gc {proc.pid}` restores it once it runs" if parked else
                f"; thread {tid} could not be given its registers back (frozen?): the process may be damaged")
        if isinstance(error, HotpatchError) and note not in error.message:
            error.message += note
