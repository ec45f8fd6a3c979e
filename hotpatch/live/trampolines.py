"""Redirecting one function: the jump at its entry, the bytes it replaces, the range to guard.

Built from the patch metadata and the image linked at its final address,
before any thread is stopped; written (and undone) while all are.
"""

from dataclasses import dataclass

from hotpatch.arch.base import Arch, Branch
from hotpatch.link.linker import LinkedImage
from hotpatch.live.records import PatchRecord
from hotpatch.live.transaction import Transaction
from hotpatch.patchfile import PatchMeta
from hotpatch.process.memory import Memory
from hotpatch.process.modules import Module
from hotpatch.safety.activeness import GuardedRange, RangeSet
from hotpatch.steps import Steps


@dataclass(frozen=True)
class Trampoline:
    name: str
    entry: int      # the replaced function's entry
    branch: Branch  # what is written at branch.site (landing pad included)
    saved: bytes    # what is there now
    new: int        # the replacing function


def plan(meta: PatchMeta, module: Module, image: LinkedImage, arch: Arch, mem: Memory) -> list[Trampoline]:
    out = []
    for fn in meta.replace:
        entry = module.bias + fn.offset
        new = image.symbols[fn.name]
        # The landing pad is written too: kept as is (endbr64, bti c) or
        # turned into bti c (paciasp), so one range covers both.
        pad = arch.entry_rewrite(bytes.fromhex(fn.head))[:fn.pad]
        if fn.hop:   # too short: the jump in the padding before, a short one to it after the pad
            branch = arch.hop_branch(entry, pad, new)
        else:
            jump = arch.branch(entry + fn.pad, new, fn.room - fn.pad)
            branch = Branch(entry, pad + jump.code, jump.form)
        out.append(Trampoline(fn.name, entry, branch, mem.read(branch.site, len(branch.code)), new))
    return out


def guarded_ranges(meta: PatchMeta, module: Module, applied: list[PatchRecord]) -> RangeSet:
    """Where no thread may be at the switch: the replaced functions (their .cold parts included) and,
    for a function an earlier patch replaced, that patch's code: the version running now."""
    ranges = [GuardedRange(module.bias + fn.offset, module.bias + fn.offset + fn.room, fn.name)
              for fn in meta.replace]
    ranges += [GuardedRange(module.bias + off, module.bias + off + size, fn.name + ".cold")
               for fn in meta.replace for off, size in fn.cold]
    for fn in meta.replace:
        entry = module.bias + fn.offset
        newest = next((r for r in reversed(applied) if any(f.entry == entry for f in r.functions)), None)
        if newest is None:
            continue
        # The record keeps where each version starts, not its size: it runs
        # to the next replacing function of that image, or the image's code end.
        starts = sorted({f.new for f in newest.functions} | {newest.code[1]})
        new = next(f.new for f in newest.functions if f.entry == entry)
        end = next(a for a in starts if a > new) if new < newest.code[1] else new
        ranges.append(GuardedRange(new, end, f"{fn.name} (patch {newest.id})"))
    return RangeSet(ranges)


def switch(tramps: list[Trampoline], mem: Memory, tx: Transaction, steps: Steps) -> None:
    """Write every jump, each undoable; all threads are stopped."""
    for i, t in enumerate(tramps):
        tx.on_undo(f"restore {t.name}", lambda t=t: mem.write(t.branch.site, t.saved))
        mem.write(t.branch.site, t.branch.code)
        if i == 0:
            steps.mark("first-switched")
    steps.mark("switched")
