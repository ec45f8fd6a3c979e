"""revert: restore the bytes a patch replaced, in one stop, then free its image (live/undo.py).

The restore is the commit point; what comes after only frees memory.
"""

from hotpatch.errors import HotpatchError, PatchMismatch, UsageError
from hotpatch.live import hostkey, perfmap, records, sandbox, transition
from hotpatch.live.records import PatchRecord
from hotpatch.live.transaction import say_left_parked
from hotpatch.live.undo import apply_recomposed, code_ranges, free_images, recompose, restore
from hotpatch.live.unwinding import Stacks
from hotpatch.ops.settle import settle, view
from hotpatch.process.attach import Process, attach, check_pid, process_arch
from hotpatch.steps import Steps, check_interrupted


def revert(pid: int, patch_id: int | None = None, revert_all: bool = False, timeout: float = 10.0,
           key: bytes | None = None) -> dict:
    """Revert in process `pid`. `key`: the host key (read here if not given: a fleet run reads it once)."""
    steps = Steps("revert")
    check_pid(pid)
    proc = attach(pid, process_arch(pid), abort_check=check_interrupted)
    try:
        return _revert(proc, patch_id, revert_all, timeout, steps, key if key is not None else hostkey.load())
    except HotpatchError as e:
        say_left_parked(proc, e)
        raise
    finally:
        proc.close()


def choose(pid: int, applied: list[PatchRecord], patch_id: int | None, revert_all: bool) -> list[PatchRecord]:
    """The records to revert, newest first, in any order: a function a newer patch that stays replaced
    again keeps that version (under_kept, live/undo.py recompose)."""
    if not applied:
        raise UsageError(f"no patch is applied to process {pid}",
                         "nothing to revert (`hotpatch list` shows retired images; `hotpatch gc` frees them)")
    if revert_all:
        chosen = list(applied)
    elif patch_id is None:
        chosen = [applied[-1]]
    else:
        chosen = [r for r in applied if r.id == patch_id]
        if not chosen:
            raise UsageError(f"process {pid} has no patch {patch_id}",
                             f"applied: {', '.join(str(r.id) for r in applied)}")
    chosen_ids = {r.id for r in chosen}
    for r in chosen:
        sites = {f.entry: f.site for f in r.functions}
        for later in applied:
            if later.id > r.id and later.id not in chosen_ids and any(
                    f.entry in sites and f.site != sites[f.entry] for f in later.functions):
                # one wrote from the padding before a short function, the other at its entry
                raise UsageError(f"patch {r.id} cannot be reverted while patch {later.id} replaces the "
                                 "same function with a jump of another shape", f"revert patch {later.id} first")
    return sorted(chosen, key=lambda r: r.id, reverse=True)


def under_kept(chosen: list[PatchRecord], applied: list[PatchRecord]) -> bool:
    """Whether a chosen patch has a newer one that stays replacing one of its functions again."""
    ids = {r.id for r in chosen}
    return any(later.id > r.id and later.id not in ids and {f.site for f in r.functions} &
               {f.site for f in later.functions} for r in chosen for later in applied)


def _revert(proc: Process, patch_id: int | None, revert_all: bool, timeout: float, steps: Steps,
            key: bytes | None) -> dict:
    sandbox.check_process(proc)
    seen = view(proc, key)
    repaired = settle(proc, timeout, seen)
    if repaired:
        seen = view(proc, key)
    maps, found, modules = seen.maps, seen.found, seen.loaded.modules
    applied = [r for r in found if not r.retired]
    if not applied and repaired:
        return {"status": "repaired", "pid": proc.pid, "reverted": [], "patches": [], "freed": [],
                "retired": [], "unfreed": [], "repaired": repaired, "warnings": []}
    chosen = choose(proc.pid, applied, patch_id, revert_all)
    gone = [r for r in chosen if records.unloaded(r, maps, modules)]   # dlclose()d: nothing to restore
    for r in chosen:
        reason = records.verify_unloaded(r, maps) if r in gone else records.verify(r, proc.arch, maps, modules)
        if reason is not None:
            raise PatchMismatch(f"the record of patch {r.id} fails verification ({reason}); nothing was done",
                                "it was not written by hotpatch, or the process changed it: inspect the process")
    notes = [f"patch {r.id} ({r.patch}): its library {r.module} is no longer loaded; its image is freed, "
             "there was no code to restore" for r in gone]
    chosen = [r for r in chosen if r not in gone]
    if not chosen:
        proc.detach_all(keep=proc.syscall_thread())
        freed, retired, unfreed = free_images(proc, gone, proc.stack_mappings(), steps)
        proc.detach_all()
        return {"status": "reverted", "pid": proc.pid, "reverted": [r.id for r in gone],
                "patches": [r.patch for r in gone], "checks": 0, "timings_ms": steps.marks, "freed": freed,
                "retired": retired, "unfreed": unfreed, "warnings": notes, "repaired": repaired}
    stacks = Stacks(proc, maps, modules, found)

    journal(chosen, proc, reverting=True)   # a run killed from here on is completed by the next one
    try:
        attempts = transition.stop_when_safe(proc, code_ranges(chosen), timeout, steps, stacks, maps)
        if under_kept(chosen, applied):   # out of order: each function to the newest version that stays
            apply_recomposed(recompose(chosen, applied, proc.mem), proc.mem, key, proc.pid, steps)
        else:
            restore(chosen, proc.mem, steps)
    except BaseException:
        with proc.uninterruptible():
            journal(chosen, proc, reverting=False)
        raise
    steps.mark("switched", abortable=False)   # the commit point: reverted, the rest only frees memory

    # No thread runs or returns into the images and nothing jumps there now:
    # the others go while one thread frees them.
    proc.detach_all(keep=proc.syscall_thread())
    steps.mark("resumed", abortable=False)
    journal(chosen, proc, reverting=False)
    thread_stacks = proc.stack_mappings()
    freed, retired, unfreed = free_images(proc, chosen + gone, thread_stacks, steps)
    steps.mark("unmapped", abortable=False)
    proc.detach_all()
    warning = perfmap.update(proc.pid, records.find_records(proc.maps(), proc.mem))
    return {"status": "reverted", "pid": proc.pid, "reverted": [r.id for r in chosen + gone],
            "patches": [r.patch for r in chosen + gone], "checks": attempts, "timings_ms": steps.marks,
            "freed": freed, "retired": retired, "unfreed": unfreed,
            "warnings": notes + ([warning] if warning else []), "repaired": repaired}


def journal(chosen: list[PatchRecord], proc: Process, reverting: bool) -> None:
    """The records' journal flag: a revert under way, or none."""
    for r in chosen:
        r.reverting = reverting
        if proc.alive():
            records.write_flags(r, proc.mem)
