"""Precise stacks for the activeness check: what each suspect thread's real frames are.

The C-speed word scan (safety/activeness.find_suspects) stays the first
filter: a thread with no candidate word and no guarded pc is safe without
unwinding. A thread with a candidate is unwound from its registers through
the CFI of every module (prepared here while the process runs), the vdso
(read from memory) and the patch images (their .eh_frame, from the records),
only as far up as its highest candidate word. It is busy if a real frame is
in a guarded range, or if its stack cannot be unwound reliably (the kernel
livepatch rule): no CFI for a frame, a loop, a frame outside any mapping.
"""

from hotpatch.elf.cfi import CallFrameTable
from hotpatch.errors import ELFFormatError
from hotpatch.live.backtrace import Symbolizer
from hotpatch.live.records import PatchRecord
from hotpatch.process.attach import Process
from hotpatch.process.maps import Mapping
from hotpatch.process.modules import Module, module_file
from hotpatch.safety.activeness import BusyThread, RangeSet, Snapshot, Suspect, find_suspects
from hotpatch.safety.unwind import CodeMap, Walk, unwind

UNRELIABLE = "an unreliable stack"


class Stacks:
    """What reading a process's real stacks needs, prepared while it runs: its code map and names."""

    def __init__(self, proc: Process, maps: list[Mapping], modules: list[Module], applied: list[PatchRecord]):
        self.proc = proc
        self.code = code_map(proc, maps, modules, applied)
        self.symbolizer = Symbolizer(proc.pid, modules, maps, applied)

    def find_busy(self, snapshot: Snapshot, ranges: RangeSet) -> BusyThread | None:
        """With every thread stopped: the first thread truly inside `ranges` (or unwalkable), else None."""
        for suspect in find_suspects(snapshot, ranges):
            regs = self.proc.registers(suspect.tid)
            if regs is None:
                continue   # exited meanwhile
            verdict = suspect.executing or judge(suspect, self.walk(snapshot, suspect, regs), ranges)
            if verdict is not None:
                # The evidence: the whole chain, not only as far as the candidates (one thread, once).
                whole = self.walk(snapshot, suspect, regs, bounded=False)
                return BusyThread(verdict.tid, verdict.label, verdict.how, verdict.address,
                                  tuple(f.pc for f in whole.frames), return_point(whole, ranges))
        return None

    def walk(self, snapshot: Snapshot, suspect: Suspect, regs, bounded: bool = True) -> Walk:
        """The suspect's frames, up to its highest candidate word (aarch64's LR counts at sp) when bounded."""
        bound = max(suspect.highest, snapshot.bases[suspect.index]) + 8 if bounded else None
        return unwind(self.proc.arch, regs, snapshot.reader(suspect.index), self.code.find_rule, stop_above=bound)

    def backtrace(self, busy: BusyThread) -> list[str]:
        return self.symbolizer.backtrace(list(busy.frames))


def code_map(proc: Process, maps: list[Mapping], modules: list[Module], applied: list[PatchRecord]) -> CodeMap:
    """Every executable mapping with its CFI (None where there is none: a walk reaching it is unreliable)."""
    code = CodeMap(proc.arch)
    tables: dict[str, CallFrameTable | None] = {}
    for m in maps:
        if not m.executable:
            continue
        module = next((mod for mod in modules if mod.path == m.path), None)
        table, bias = None, 0
        if module is not None:
            if module.path not in tables:
                tables[module.path] = _file_table(proc.pid, module)
            table, bias = tables[module.path], module.bias
        elif m.path == "[vdso]":
            try:
                table = CallFrameTable.from_memory(proc.mem.read, m.start, m.end - m.start)
                bias = table.load_bias
            except ELFFormatError:
                table = None
        else:
            record = next((r for r in applied if r.base <= m.start < r.base + r.size), None)
            if record is not None and record.eh_frame:
                start, end = record.eh_frame
                try:
                    table = CallFrameTable.from_eh_frame(proc.mem.read(start, end - start), start,
                                                        f"patch {record.id}")
                except ELFFormatError:
                    table = None
        try:
            code.add(m.start, m.end, table, bias)
        except ELFFormatError:
            code.add(m.start, m.end, None)   # unreadable CFI: a walk reaching it is unreliable
    return code


def _file_table(pid: int, module: Module) -> CallFrameTable | None:
    try:
        return CallFrameTable.from_path(module_file(pid, module))
    except ELFFormatError:
        return None


def judge(suspect: Suspect, frames: Walk, ranges: RangeSet) -> BusyThread | None:
    """Busy if a real frame is in a range, or the walk is unreliable; None: safe, the candidates were stale."""
    pcs = tuple(f.pc for f in frames.frames)
    for i, pc in enumerate(pcs):
        r = ranges.find(pc)
        if r is not None:
            return BusyThread(suspect.tid, r.label, "is executing" if i == 0 else "will return into", pc, pcs)
    if not frames.reliable:
        near = suspect.words[0][1].label if suspect.words else suspect.lr_hit.label if suspect.lr_hit else "?"
        return BusyThread(suspect.tid, near, f"has {UNRELIABLE} ({frames.why()}) and may return into",
                          frames.address, pcs)
    return None


def return_point(frames: Walk, ranges: RangeSet) -> int | None:
    """The return address above the outermost guarded frame: once there, the thread has left them all.

    None when it cannot be trusted: an unreliable walk, or a signal frame on the
    way (a handler's return does not pass through a return address).
    """
    if not frames.reliable:
        return None
    outermost = max((i for i, f in enumerate(frames.frames) if ranges.find(f.pc) is not None), default=None)
    if outermost is None or outermost + 1 >= len(frames.frames):
        return None
    if any(f.signal for f in frames.frames[:outermost + 2]):
        return None
    return frames.frames[outermost + 1].pc
