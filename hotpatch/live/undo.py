"""Taking a patch back: its sites restored (all threads stopped), its image freed or retired.

The restore is revert's commit point; freeing the image comes after the
other threads run again, through one thread kept stopped. An image is freed
only when no word of the process's writable memory points into its code (a
function pointer, a parked coroutine's saved context); otherwise it is
retired: kept mapped, unreachable through the functions, shown by `list`,
and freed by `hotpatch gc PID` once nothing points into it. A failure to
unmap cannot undo the revert either: it is reported and a later run frees it.
"""

from dataclasses import dataclass

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


@dataclass
class Recomposed:
    """Taking patches out from under newer ones that stay: what each site must hold, and what each
    remaining patch must record as the bytes it replaced."""
    writes: list[tuple[int, bytes, bytes]]            # (site, what it holds, what it must hold)
    saved: list[tuple[PatchRecord, int, str]]          # (record, function index, its new saved bytes, hex)


def recompose(chosen: list[PatchRecord], applied: list[PatchRecord], mem: Memory) -> Recomposed:
    """For every site of the chosen records: its original bytes (each patch's saved bytes put back,
    newest first), then the jumps of the patches that stay, oldest first. A function a newer patch
    replaced again keeps that patch's jump, which now records the bytes from before the chosen one."""
    gone = {r.id for r in chosen}
    writes: list[tuple[int, bytes, bytes]] = []
    saved: list[tuple[PatchRecord, int, str]] = []
    for site in sorted({f.site for r in chosen for f in r.functions}):
        chain = sorted((r for r in applied if any(f.site == site for f in r.functions)), key=lambda r: r.id)
        fs = [next(i for i, f in enumerate(r.functions) if f.site == site) for r in chain]
        length = max(len(r.functions[i].written) // 2 for r, i in zip(chain, fs))
        current = mem.read(site, length)
        view = bytearray(current)
        for r, i in reversed(list(zip(chain, fs))):
            before = bytes.fromhex(r.functions[i].saved)
            view[:len(before)] = before
        original = bytes(view)
        every = bytearray(original)   # what the site holds with every patch of the chain on it
        for r, i in zip(chain, fs):
            every[:len(r.functions[i].written) // 2] = bytes.fromhex(r.functions[i].written)
        for r, i in zip(chain, fs):
            if r.id in gone:
                continue
            f = r.functions[i]
            below = bytes(view[:len(f.written) // 2]).hex()
            if below != f.saved:
                saved.append((r, i, below))
            view[:len(f.written) // 2] = bytes.fromhex(f.written)
        if current not in (bytes(every), bytes(view)):   # neither before nor after: someone else wrote there
            newest = chain[-1].functions[fs[-1]]
            raise PatchMismatch(f"{newest.name} at {newest.entry:#x} was modified after patch {chain[-1].id} "
                                "was applied; not reverting", "inspect the process")
        if bytes(view) != current:
            writes.append((site, current, bytes(view)))
    return Recomposed(writes, saved)


def apply_recomposed(plan: Recomposed, mem: Memory, key: bytes, pid: int, steps: Steps) -> None:
    """Write the sites, then the records of the patches that stay (all threads stopped). A run killed in
    between is completed by the next one (ops/settle.py): recompose() gives the same answer again."""
    done = []
    try:
        for site, current, new in plan.writes:
            mem.write(site, new)
            done.append((site, current))
            if len(done) == 1:
                steps.mark("first-restored")
    except BaseException:
        for site, current in reversed(done):
            mem.write(site, current)
        raise
    for r in {id(r): r for r, _i, _s in plan.saved}.values():
        before = records.json_length(r)
        for rr, i, new in plan.saved:
            if rr is r:
                r.functions[i].saved = new
        records.rewrite(r, mem, key, pid, before)


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
