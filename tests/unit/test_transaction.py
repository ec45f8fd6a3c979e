"""The transaction's undo: newest first, every action run even after one fails, and a failed undo is
exit 7 naming what could not be undone (never exit 5, "cannot trace")."""

import contextlib

import pytest

from hotpatch.errors import EXIT_UNDO_FAILED, InjectedFault, ProcessGone, UndoFailed
from hotpatch.live.transaction import Transaction


class Alive:
    """What abort() asks of the process: is it alive, a scope where waits are not cut short, and the
    threads a remote call could not give their registers back (none here)."""

    def __init__(self, alive: bool = True):
        self.pid, self._alive = 4242, alive

    def alive(self) -> bool:
        return self._alive

    def uninterruptible(self):
        return contextlib.nullcontext()

    def remote_left_parked(self) -> set:
        return set()


def test_undo_runs_newest_first_and_past_a_failure():
    done, tx = [], Transaction()
    tx.on_undo("unmap", lambda: done.append("unmap"))
    tx.on_undo("restore f", lambda: (_ for _ in ()).throw(OSError("EIO")))
    tx.on_undo("restore g", lambda: done.append("restore g"))
    with pytest.raises(UndoFailed) as e:
        tx.abort(Alive(), InjectedFault("fault injected at apply:switched"))
    assert done == ["restore g", "unmap"]
    assert e.value.exit_code == EXIT_UNDO_FAILED == 7
    assert e.value.line().startswith("fault injected at apply:switched; and undoing failed: restore f: EIO")
    assert "may be damaged" in e.value.line()


def test_clean_undo_raises_nothing_and_commit_forgets():
    done, tx = [], Transaction()
    tx.on_undo("unmap", lambda: done.append("unmap"))
    tx.abort(Alive(), InjectedFault("x"))
    assert done == ["unmap"]
    tx.on_undo("unmap", lambda: done.append("again"))
    tx.commit()
    tx.abort(Alive(), InjectedFault("x"))
    assert done == ["unmap"]


def test_dead_process_has_nothing_to_undo():
    done, tx = [], Transaction()
    tx.on_undo("unmap", lambda: done.append("unmap"))
    with pytest.raises(ProcessGone, match="exited during the operation"):
        tx.abort(Alive(alive=False), InjectedFault("x"))
    assert done == []
