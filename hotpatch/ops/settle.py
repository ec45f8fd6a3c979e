"""settle: finish what an interrupted run left, before apply, revert or gc does its own work.

live/repair.py puts parked threads back and unmaps images never filled. Then
the records: an inactive one (its jumps never written, or all taken back
already) has its image freed, as revert frees one; a partial one journaled
as under way (committing or reverting: the run was cut between two sites)
is rolled back first, with every thread stopped and none in its code,
exactly as revert restores. A partial one without that journal was changed
by someone else, and is left alone; so is a record that fails verification.
"""

from dataclasses import dataclass

from hotpatch.live import hostkey, records, repair, transition
from hotpatch.live.undo import apply_recomposed, code_ranges, free_images, recompose, restore
from hotpatch.live.unwinding import Stacks
from hotpatch.process import inflight
from hotpatch.process.attach import Process
from hotpatch.process.maps import Mapping
from hotpatch.process.modules import LoadedModules, loaded_modules
from hotpatch.steps import Steps


@dataclass
class View:
    """The process as one reading of its maps shows it: what apply builds on when settle changed nothing."""
    maps: list[Mapping]
    loaded: LoadedModules
    found: list[records.PatchRecord]   # every record, retired ones too, authenticated with the host key


def view(proc: Process, key: bytes) -> View:
    maps = proc.maps()
    return View(maps, loaded_modules(proc.pid, maps, proc.mem), records.find_records(maps, proc.mem, proc.pid, key))


def settle(proc: Process, timeout: float, seen: View | None = None) -> list[str]:
    """Repair what an interrupted run left in `proc` (seized, running); a line for each thing done.
    `seen`: the process as read just before (else it is read here); it is stale once something was done."""
    steps = Steps("settle")
    marks = inflight.left_behind(proc.pid)   # parked threads are looked for only after a run that died
    done = repair.unpark_threads(proc) if marks is None or marks else []
    inflight.forget(marks or [])
    done += repair.free_pending(proc, seen.maps if seen is not None and not done else None)
    if seen is None or done:
        seen = view(proc, hostkey.load())
    maps, found, modules = seen.maps, seen.found, seen.loaded.modules
    stale, how, under = [], {}, []
    for r in found:
        if r.retired or not r.functions or records.verify(r, proc.arch, maps, modules) is not None:
            continue
        state = records.state(r, proc.mem)
        if state == "superseded" and r.reverting:
            under.append(r)   # reverted out of order, from under a newer patch, and cut short: completed
        elif state == "inactive" or (state == "partial" and records.interrupted(r)):
            stale.append(r)
            how[r.id] = "half applied" if state == "partial" and r.committing else \
                "half reverted" if state == "partial" else "not applied" if records.interrupted(r) else ""
        elif state == "active" and records.interrupted(r):
            # Every jump stands: an apply was past its last write, or a revert before its first.
            r.committing = r.reverting = False
            records.write_flags(r, proc.mem)
            done.append(f"patch {r.id} ({r.patch}) was left marked by an interrupted run: it stands, applied")
    if under:
        done += _complete_out_of_order(proc, under, [r for r in found if not r.retired], maps, modules, found,
                                       timeout, steps)
    if not stale:
        return done
    stacks = Stacks(proc, maps, modules, found)
    transition.stop_when_safe(proc, code_ranges(stale), timeout, steps, stacks)
    try:
        restore(sorted(stale, key=lambda r: r.id, reverse=True), proc.mem, steps, cut_short=True)
    finally:
        proc.resume_all()
    for r in stale:
        done.append(f"patch {r.id} ({r.patch}) was left {how[r.id]} by an interrupted run: rolled back, "
                    "its image freed" if how[r.id] else
                    f"patch {r.id} ({r.patch}) has no jump standing any more (reverted before with its image "
                    "left, or its library loaded again): its image freed")
        r.committing = r.reverting = False
    freed, retired, unfreed = free_images(proc, stale, proc.stack_mappings(), steps)
    done += [f"the image of patch {u['id']} stays mapped, retired ({u['reason']})" for u in retired]
    done += [f"the image of patch {u['id']} could not be unmapped ({u['reason']})" for u in unfreed]
    return done


def _complete_out_of_order(proc: Process, under: list, applied: list, maps, modules, found, timeout: float,
                           steps: Steps) -> list[str]:
    """Finish reverting patches an interrupted run was taking out from under newer ones: the same
    recomposition again (it gives the same answer whatever part of it was written), then their images."""
    stacks = Stacks(proc, maps, modules, found)
    transition.stop_when_safe(proc, code_ranges(under), timeout, steps, stacks)
    try:
        apply_recomposed(recompose(under, applied, proc.mem), proc.mem, hostkey.load(), proc.pid, steps)
    finally:
        proc.resume_all()
    for r in under:
        r.reverting = False
    freed, retired, unfreed = free_images(proc, under, proc.stack_mappings(), steps)
    out = [f"patch {r.id} ({r.patch}) was left half reverted by an interrupted run, from under a newer patch: "
           "completed, its image freed" for r in under]
    out += [f"the image of patch {u['id']} stays mapped, retired ({u['reason']})" for u in retired]
    return out + [f"the image of patch {u['id']} could not be unmapped ({u['reason']})" for u in unfreed]
