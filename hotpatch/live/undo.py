"""Taking a patch back: its sites restored (all threads stopped), its image freed or retired.

The restore is revert's commit point; freeing the image comes after the
other threads run again, through one thread kept stopped. An image is freed
only when no word of the process's writable memory points into its code (a
function pointer, a parked coroutine's saved context); otherwise it is
retired: kept mapped, unreachable through the functions, shown by `list`,
and freed by `hotpatch gc PID` once nothing points into it. A failure to
unmap cannot undo the revert either: it is reported and a later run frees it.
"""

from hotpatch.errors import HotpatchError, PatchMismatch
from hotpatch.live import ehframe, image, records
from hotpatch.live.records import PatchRecord
from hotpatch.process.attach import Process
from hotpatch.process.memory import Memory
from hotpatch.process.modules import loaded_modules
from hotpatch.safety.activeness import GuardedRange, RangeSet
from hotpatch.steps import Steps

DEREGISTER_TIMEOUT = 5.0


def restore(chosen: list[PatchRecord], mem: Memory, steps: Steps, cut_short: bool = False) -> None:
    """Put back the saved bytes of every chosen record (all threads stopped); all or none.

    Newest first, each site read once: a record whose sites all hold its
    jumps is restored; one whose sites all hold the saved bytes never got its
    jumps (or lost them already) and is left as it is. Some of each is a run
    cut short between two sites when `cut_short` (records journaled as under
    way: the sites still holding jumps are restored); otherwise, as anything
    else, someone else changed them, and nothing is restored (what was is put back).
    """
    written = []
    try:
        for r in chosen:
            current = [mem.read(f.site, len(f.written) // 2).hex() for f in r.functions]
            jumps = [c == f.written for c, f in zip(current, r.functions)]
            for c, f, jump in zip(current, r.functions, jumps):
                if not jump and (c != f.saved or (any(jumps) and not cut_short)):
                    raise PatchMismatch(f"{f.name} at {f.entry:#x} was modified after patch {r.id} was "
                                        "applied; not reverting", "inspect the process")
            for f, jump in zip(r.functions, jumps):
                if jump:
                    mem.write(f.site, bytes.fromhex(f.saved))
                    written.append(f)
                    if len(written) == 1:
                        steps.mark("first-restored")
    except BaseException:
        for f in reversed(written):
            mem.write(f.site, bytes.fromhex(f.written))
        raise


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
            why = ehframe.deregistered(proc, loaded, r, DEREGISTER_TIMEOUT)
            if why is not None:
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
