"""Redirecting one function: the jump at its entry, the bytes it replaces, the range to guard.

Built from the patch metadata and the image linked at its final address,
before any thread is stopped; written (and undone) while all are.
"""

from dataclasses import dataclass

from hotpatch.arch.base import Arch, Branch
from hotpatch.link.linker import LinkedImage
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
        jump = arch.branch(entry + fn.pad, new, fn.room - fn.pad)
        # The landing pad is written too: kept as is (endbr64, bti c) or
        # turned into bti c (paciasp), so one range covers both.
        pad = arch.entry_rewrite(bytes.fromhex(fn.head))[:fn.pad]
        branch = Branch(entry, pad + jump.code, jump.form)
        out.append(Trampoline(fn.name, entry, branch, mem.read(entry, len(branch.code)), new))
    return out


def guarded_ranges(meta: PatchMeta, module: Module) -> RangeSet:
    """The replaced functions' code (their .cold parts included): no thread may be in it at the switch."""
    return RangeSet([GuardedRange(module.bias + fn.offset, module.bias + fn.offset + fn.room, fn.name)
                     for fn in meta.replace] +
                    [GuardedRange(module.bias + off, module.bias + off + size, fn.name + ".cold")
                     for fn in meta.replace for off, size in fn.cold])


def switch(tramps: list[Trampoline], mem: Memory, tx: Transaction, steps: Steps) -> None:
    """Write every jump, each undoable; all threads are stopped."""
    for i, t in enumerate(tramps):
        tx.on_undo(f"restore {t.name}", lambda t=t: mem.write(t.branch.site, t.saved))
        mem.write(t.branch.site, t.branch.code)
        if i == 0:
            steps.mark("first-switched")
    steps.mark("switched")
