"""revert: restore the bytes a patch replaced, in one stop, then free its image.

The restore is the commit point; freeing the image comes after the other
threads run again, through one thread kept stopped. An image is freed only
when no word of the process's writable memory points into its code (a
function pointer, a parked coroutine's saved context); otherwise it is
retired: kept mapped, unreachable through the functions, shown by `list`, and
freed by `hotpatch gc PID` once nothing points into it. A failure to unmap
cannot undo the revert either: it is reported and a later revert frees it.
"""

from hotpatch.errors import HotpatchError, PatchMismatch, UsageError
from hotpatch.live import ehframe, image, perfmap, records, sandbox, transition
from hotpatch.live.records import PatchRecord
from hotpatch.live.unwinding import Stacks
from hotpatch.process.attach import Process, attach, check_pid, process_arch
from hotpatch.process.memory import Memory
from hotpatch.process.modules import loaded_modules
from hotpatch.safety.activeness import GuardedRange, RangeSet
from hotpatch.steps import Steps, check_interrupted

DEREGISTER_TIMEOUT = 5.0


def revert(pid: int, patch_id: int | None = None, revert_all: bool = False, timeout: float = 10.0) -> dict:
    steps = Steps("revert")
    check_pid(pid)
    proc = attach(pid, process_arch(pid), abort_check=check_interrupted)
    try:
        return _revert(proc, patch_id, revert_all, timeout, steps)
    finally:
        proc.close()


def choose(pid: int, applied: list[PatchRecord], patch_id: int | None, revert_all: bool) -> list[PatchRecord]:
    """The records to revert, newest first; refuses one a newer, kept patch builds on."""
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
        sites = {f.site for f in r.functions}
        for later in applied:
            if later.id > r.id and later.id not in chosen_ids and sites & {f.site for f in later.functions}:
                raise UsageError(f"patch {r.id} cannot be reverted while patch {later.id} replaces the "
                                 "same function again", f"revert patch {later.id} first")
    return sorted(chosen, key=lambda r: r.id, reverse=True)


def restore(chosen: list[PatchRecord], mem: Memory, steps: Steps) -> None:
    """Put back the saved bytes of every chosen record (all threads stopped); all or none.

    Newest first, each site read once: a record whose sites all hold its
    jumps is restored; one whose sites all hold the saved bytes never got its
    jumps (an interrupted apply) and is only unmapped; anything else was
    changed by someone else and is left alone (what was restored is put back).
    """
    written = []
    try:
        for r in chosen:
            current = [mem.read(f.site, len(f.written) // 2).hex() for f in r.functions]
            if all(c == f.saved for c, f in zip(current, r.functions)):
                continue
            for c, f in zip(current, r.functions):
                if c != f.written:
                    raise PatchMismatch(f"{f.name} at {f.entry:#x} was modified after patch {r.id} was "
                                        "applied; not reverting", "inspect the process")
            for f in r.functions:
                mem.write(f.site, bytes.fromhex(f.saved))
                written.append(f)
                if len(written) == 1:
                    steps.mark("first-restored")
    except BaseException:
        for f in reversed(written):
            mem.write(f.site, bytes.fromhex(f.written))
        raise


def _revert(proc: Process, patch_id: int | None, revert_all: bool, timeout: float, steps: Steps) -> dict:
    sandbox.check_process(proc)
    maps = proc.maps()
    found = records.find_records(maps, proc.mem)
    applied = [r for r in found if not r.retired]
    chosen = choose(proc.pid, applied, patch_id, revert_all)
    modules = loaded_modules(proc.pid, maps, proc.mem).modules
    for r in chosen:
        reason = records.verify(r, proc.arch, maps, modules)
        if reason is not None:
            raise PatchMismatch(f"the record of patch {r.id} fails verification ({reason}); nothing was done",
                                "it was not written by hotpatch, or the process changed it: inspect the process")
    stacks = Stacks(proc, maps, modules, found)

    attempts = transition.stop_when_safe(proc, code_ranges(chosen), timeout, steps, stacks)
    restore(chosen, proc.mem, steps)
    steps.mark("switched", abortable=False)   # the commit point: reverted, the rest only frees memory

    # No thread runs or returns into the images and nothing jumps there now:
    # the others go while one thread frees them.
    proc.detach_all(keep=proc.syscall_thread())
    steps.mark("resumed", abortable=False)
    thread_stacks = proc.stack_mappings()
    freed, retired, unfreed = free_images(proc, chosen, thread_stacks, steps)
    steps.mark("unmapped", abortable=False)
    proc.detach_all()
    warning = perfmap.update(proc.pid, records.find_records(proc.maps(), proc.mem))
    return {"status": "reverted", "pid": proc.pid, "reverted": [r.id for r in chosen],
            "patches": [r.patch for r in chosen], "checks": attempts, "timings_ms": steps.marks,
            "freed": freed, "retired": retired, "unfreed": unfreed, "warnings": [warning] if warning else []}


def code_ranges(chosen: list[PatchRecord]) -> RangeSet:
    return RangeSet([GuardedRange(r.code[0], r.code[1], f"the code of patch {r.id}") for r in chosen])


def free_images(proc: Process, chosen: list[PatchRecord], thread_stacks: set[int],
                steps: Steps) -> tuple[list[int], list[dict], list[dict]]:
    """Unmap each image nothing points into; retire the others. (freed ids, retired, unmap failures)."""
    freed, retired, unfreed = [], [], []
    loaded = None
    for r in chosen:
        ref = image.find_reference(proc, code_ranges([r]), thread_stacks, (r.base, r.base + r.size))
        why = ref.describe() if ref is not None else None
        if why is None and r.frames_registered and r.eh_frame:
            loaded = loaded or loaded_modules(proc.pid, proc.maps(), proc.mem)
            why = ehframe.deregistered(proc, loaded, r.eh_frame[0], r.trap, DEREGISTER_TIMEOUT)
            if why is None:
                r.frames_registered = False
                records.write_flags(r, proc.mem)
            else:
                why = f"its unwind information could not be deregistered ({why})"
        if why is not None:
            records.mark_retired(r, proc.mem)
            retired.append({"id": r.id, "base": hex(r.base), "size": r.size, "reason": why})
            continue
        try:
            steps.mark("unmapping", abortable=False, hooks=True)   # after the commit: a request waits
            proc.syscall("munmap", r.base, r.size)
            freed.append(r.id)
        except HotpatchError as e:
            if not proc.alive():
                raise
            # The code is restored and the image unreachable: the revert
            # stands; the memory stays until a later revert frees it.
            unfreed.append({"id": r.id, "base": hex(r.base), "size": r.size, "reason": e.message})
    return freed, retired, unfreed
