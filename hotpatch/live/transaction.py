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
