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

from dataclasses import dataclass

from hotpatch.elf import filecache
from hotpatch.elf.cfi import CallFrameTable
from hotpatch.errors import ELFFormatError
from hotpatch.live.backtrace import Symbolizer
from hotpatch.live.records import PatchRecord
from hotpatch.process.attach import Process
from hotpatch.process.maps import MapIndex, Mapping
from hotpatch.process.modules import Module, module_file
from hotpatch.safety.activeness import BusyThread, RangeSet, Snapshot, Suspect, find_suspects
from hotpatch.safety.unwind import CodeMap, Walk, unwind

UNRELIABLE = "an unreliable stack"


WALK_BUDGET = 32   # threads unwound inside one stop; more are surveyed one by one while the process runs


@dataclass(frozen=True)
class Survey:
    """Too many threads to unwind inside the stop: these, one at a time, with the process running."""
    tids: tuple[int, ...]


class Stacks:
    """What reading a process's real stacks needs, prepared while it runs: its code map and names.

    A thread's walk depends only on its registers and its stack's bytes: a
    verdict is kept with them, and reused in a later stop where both are the
    same (a thread blocked in a system call meanwhile). When a stop would have
    to unwind more than WALK_BUDGET threads afresh, it asks for a survey
    instead: the process runs again while each of those threads is stopped
    alone, unwound and resumed, so that the next stop only compares bytes.
    """

    def __init__(self, proc: Process, maps: list[Mapping], modules: list[Module], applied: list[PatchRecord]):
        self.proc = proc
        proc.keep_registers()
        self._sources = (maps, modules, applied)
        self._code: CodeMap | None = None
        self.symbolizer = Symbolizer(proc.pid, modules, maps, applied)
        self._known: dict[int, tuple[bytes, bytes, BusyThread | None]] = {}

    @property
    def code(self) -> CodeMap:
        """The code map, read on first need: a check that finds no candidate never needs it."""
        if self._code is None:
            self._code = code_map(self.proc, *self._sources)
        return self._code

    def find_busy(self, snapshot: Snapshot, ranges: RangeSet, budget: int = WALK_BUDGET
                  ) -> BusyThread | Survey | None:
        """With every thread stopped: the first thread truly inside `ranges` (or unwalkable), else None,
        or a Survey when more than `budget` threads would need a fresh walk, or when the call frame
        tables are still to be read (never inside a stop, unless the budget is unlimited)."""
        found = find_suspects(snapshot, ranges)
        if found and self._code is None and budget <= WALK_BUDGET:
            return Survey(tuple(s.tid for s in found if s.executing is None))
        suspects, fresh = [], []
        raw_registers, known_get, part = self.proc.raw_registers, self._known.get, snapshot.part
        for suspect in found:
            raw = raw_registers(suspect.tid)
            if not raw:
                continue   # exited meanwhile
            if suspect.executing is not None:
                return self._busy(snapshot, suspect, self.proc.registers(suspect.tid), suspect.executing, ranges)
            known = known_get(suspect.tid)
            if known is not None and known[0] == raw and part(suspect.position) == known[1]:
                if known[2] is not None:
                    return known[2]
                continue
            suspects.append((suspect, self.proc.arch.regs_type.from_buffer_copy(raw)))
            fresh.append(suspect.tid)
        if len(fresh) > budget:
            return Survey(tuple(fresh))
        for suspect, regs in suspects:
            verdict = self._judge(snapshot, suspect, regs, ranges)
            if verdict is not None:
                return verdict
        return None

    def survey(self, tids: tuple[int, ...], maps: MapIndex, ranges: RangeSet) -> None:
        """Unwind each thread alone (the others run) and keep its verdict with its registers and stack."""
        self.code   # read the tables now, while the process runs
        for tid in tids:
            if not self.proc.stop_thread(tid):
                continue
            try:
                snapshot = self.proc.snapshot(maps, only=tid)
                index = snapshot.tids.index(tid) if tid in snapshot.tids else None
                regs = self.proc.registers(tid)
                if index is None or regs is None:
                    continue
                suspect = next((s for s in find_suspects(snapshot, ranges) if s.tid == tid), None)
                verdict = None
                if suspect is not None:
                    verdict = suspect.executing or self._judge(snapshot, suspect, regs, ranges)
                self._known[tid] = (bytes(regs), bytes(snapshot.part(index)), verdict)
            finally:
                self.proc.resume_thread(tid)

    def _judge(self, snapshot: Snapshot, suspect: Suspect, regs, ranges: RangeSet) -> BusyThread | None:
        verdict = judge(suspect, self.walk(snapshot, suspect, regs), ranges)
        return self._busy(snapshot, suspect, regs, verdict, ranges) if verdict is not None else None

    def _busy(self, snapshot: Snapshot, suspect: Suspect, regs, verdict: BusyThread, ranges: RangeSet) -> BusyThread:
        # The evidence: the whole chain, not only as far as the candidates (one thread, once).
        whole = self.walk(snapshot, suspect, regs, bounded=False)
        return BusyThread(verdict.tid, verdict.label, verdict.how, verdict.address,
                          tuple(f.pc for f in whole.frames), return_point(whole, ranges))

    def walk(self, snapshot: Snapshot, suspect: Suspect, regs, bounded: bool = True) -> Walk:
        """The suspect's frames, up to its highest candidate word (aarch64's LR counts at sp) when bounded."""
        bound = max(suspect.highest, snapshot.bases[suspect.position]) + 8 if bounded else None
        return unwind(self.proc.arch, regs, snapshot.reader(suspect.position), self.code.find_rule, stop_above=bound)

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
        return filecache.parsed(module_file(pid, module), CallFrameTable.from_path)
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
