"""From a patched translation unit, the object a patch carries: what changed, and references to the rest.

Included: the changed and new functions, new variables, and whatever they
reference that the running binary lacks (string literals, anonymous constants,
changed read-only tables, compiler clones that changed). Everything else they
reference binds to the running binary's own copy: an undefined symbol under
the binary's name for it, and for a file-local one the source file it belongs
to (so `counter` of a.c never binds to b.c's). Changed functions become global
so that they replace the binary's by name. The call frame information keeps
only the entries of included code.
"""

import re
import struct
from dataclasses import dataclass, field

from hotpatch.diff.compare import Changes, Unit
from hotpatch.elf.relocatable import SHF_WRITE, ObjSymbol
from hotpatch.elf.writer import OutSection, OutSymbol, write_relocatable
from hotpatch.errors import InvalidPatch

E_MACHINE = {"x86_64": 62, "aarch64": 183}
SHF_MERGE, SHF_STRINGS, SHF_GROUP = 0x10, 0x20, 0x200
EH_FRAME = ".eh_frame"
_COLD = re.compile(r"\.cold(\.\d+)?$")


def file_local(name: str, file: str) -> str:
    """The undefined name that binds to `name` of source `file` only (ops/build.py reads it back)."""
    return f"{name} ({file})"


@dataclass
class Extracted:
    obj: bytes
    replaced: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)


def extract(orig: Unit, patched: Unit, changes: Changes, source: str) -> Extracted:
    return _Extractor(orig, patched, changes, source).run()


class _Extractor:
    def __init__(self, orig: Unit, patched: Unit, changes: Changes, source: str):
        self.orig, self.patched, self.changes, self.source = orig, patched, changes, source
        self.file = source.rsplit("/", 1)[-1]
        self.by_name = {sym.name: sym for sym in patched.functions.values()}
        self.by_name.update({sym.name: sym for sym in patched.objects.values()})
        wanted = [patched.ident(self.by_name[n]) for n in changes.changed + changes.new]
        # a cold part goes with its function: the binary's would jump back into the old body
        self.wanted = set(wanted) | {w + ".cold" for w in wanted} | {patched.ident(f) for f in
                                                                   patched.functions.values()
                                                                   if _COLD.search(f.name) and
                                                                   _COLD.sub("", patched.ident(f)) in wanted}
        self.replaced = {patched.ident(self.by_name[n]) for n in changes.changed if not _COLD.search(n)}
        self.new_data = {patched.ident(self.by_name[n]) for n in changes.new_data}
        self.include: dict[int, int] = {}          # patched section index -> output section index
        self.sections: list[OutSection] = []
        self.symbols: list[OutSymbol] = []
        self.by_key: dict[tuple, int] = {}          # ("sec", i) / ("sym", name) / ("idx", i) -> output symbol
        self._eh_index: int | None = None
        self._eh_relocs: list = []
        self._closed: set[int] = set()

    # -- what goes in ---------------------------------------------------
    def run(self) -> Extracted:
        roots = {self.by_name[n].shndx for n in self.changes.changed + self.changes.new if not _COLD.search(n)}
        for index in sorted(roots):   # a section once, though aliases (C1/C2 constructors) share it
            assert isinstance(index, int)
            self._add_section(index)
        self._close(list(self.include))
        self._eh_frame()
        self._close([i for i in self.include if i != self._eh_index and i not in self._closed])
        for index, out in list(self.include.items()):
            relocs = self._eh_relocs if index == self._eh_index else \
                [(r.r_offset, r) for r in self.patched.obj.relocations.get(index, [])]
            self.sections[out].relocations = [(off, r.r_type, *self._reference(index, r)) for off, r in relocs]
        self._define_symbols()
        replaced = [self._replacement_name(self.by_name[n]) for n in self.changes.changed if not _COLD.search(n)]
        new = [n for n in self.changes.new if not _COLD.search(n)]
        return Extracted(write_relocatable(E_MACHINE[self.patched.obj.machine], self.sections, self.symbols),
                         replaced, new)

    def _close(self, pending: list[int]) -> None:
        """Add what the sections in `pending` reach and the binary lacks, and what that reaches, and so on."""
        while pending:
            index = pending.pop()
            self._closed.add(index)
            for r in self.patched.obj.relocations.get(index, []):
                target, _offset, there = self.patched.reach(index, r)
                self._check_anchor(index, r, there)
                if target is not None and target not in self.include and not self._binds(there):
                    self._add_section(target)
                    pending.append(target)

    def _check_anchor(self, index: int, r, there: ObjSymbol | None) -> None:
        """AArch64 addresses a file's statics from one base (a section anchor) plus offsets inside the
        instructions: bound to the binary's, those offsets hold only if the section's layout is the
        binary's. A new or moved variable there cannot be reached that way: refused."""
        if self.patched.obj.machine != "aarch64" or there is None or there.kind == "func":
            return
        sym = self.patched.obj.symbols[r.r_sym]
        if sym.kind != "section" or not isinstance(sym.shndx, int) or not self._binds(there):
            return
        before = self.orig.objects.get(self.patched.ident(there))
        layout = [(self.patched.ident(s), s.value, s.size) for s in self.patched.placed.get(sym.shndx, [])]
        old = [(self.orig.ident(s), s.value, s.size) for s in self.orig.placed.get(before.shndx, [])] \
            if before is not None and isinstance(before.shndx, int) else []
        if layout != old:
            added = sorted({n for n, _v, _s in layout} - {n for n, _v, _s in old})
            raise InvalidPatch(f"{self.source}: {self.patched.obj.sections[sym.shndx].name} is addressed from a "
                               "section anchor and its layout changed"
                               + (f" (new: {', '.join(added)})" if added else ""),
                               "AArch64 code reaches a file's statics by offsets from one base: keep the "
                               "existing variables in place and put new ones in a new file or struct")

    def _replacement_name(self, sym: ObjSymbol) -> str:
        """The name a replacing function takes: the binary's, and for a file-local one its file too (two
        files' static helper are two functions)."""
        name = self._binary_name(sym)
        return file_local(name, self.file) if sym.bind == "local" else name

    def _section_of(self, sym_index: int) -> int | None:
        shndx = self.patched.obj.symbols[sym_index].shndx
        return shndx if isinstance(shndx, int) and shndx else None

    def _binds(self, sym: ObjSymbol | None) -> bool:
        """A function or variable the new code uses is the running binary's own, unless it is new or
        changed (a changed writable one was refused; a changed constant goes in as a copy)."""
        if sym is None:
            return False   # literals, anonymous constants, jump tables: copied
        ident = self.patched.ident(sym)
        if sym.kind == "func":
            return ident not in self.wanted
        before = self.orig.objects.get(ident)
        if before is None or ident in self.new_data:
            return False
        same = self.orig.key_of(before) == self.patched.key_of(sym)
        return same or bool(self.patched.section(sym).sh_flags & SHF_WRITE)

    def _add_section(self, index: int) -> None:
        sec = self.patched.obj.sections[index]
        self.include[index] = len(self.sections)
        self.sections.append(OutSection(sec.name, sec.sh_type, sec.sh_flags & ~(SHF_MERGE | SHF_STRINGS | SHF_GROUP),
                                        sec.sh_addralign, sec.data, sec.sh_size))

    # -- references -------------------------------------------------------
    def _reference(self, index: int, r) -> tuple[int, int]:
        """(output symbol, addend) for relocation `r` of patched section `index`."""
        sym = self.patched.obj.symbols[r.r_sym]
        if sym.shndx == "UND":
            return self._symbol(("sym", sym.name), OutSymbol(sym.name, "notype", sym.bind, None)), r.r_addend
        if not isinstance(sym.shndx, int):
            raise InvalidPatch(f"{self.source}: reference to {sym.name or 'a symbol'} in section {sym.shndx}")
        _target, _offset, there = self.patched.reach(index, r)
        if there is not None and self._binds(there):
            name = self._binary_name(there)
            if there.bind == "local":
                name = file_local(name, self.file)
            # section+offset becomes symbol+offset: the same place
            shift = there.value - sym.value if sym is not there else 0
            return self._symbol(("sym", name), OutSymbol(name, "notype", "global", None)), r.r_addend - shift
        if sym.shndx not in self.include:
            raise InvalidPatch(f"{self.source}: code refers to {self.patched.obj.sections[sym.shndx].name}, "
                               "which is neither in the patch nor bound to the binary")
        if sym.kind == "section":
            out = self.include[sym.shndx]
            return self._symbol(("sec", out), OutSymbol("", "section", "local", out)), r.r_addend
        return self._symbol(("idx", sym.index), self._copy(sym)), r.r_addend

    def _binary_name(self, sym: ObjSymbol) -> str:
        """The name the running binary has for it: the original build's (clone numbers can differ)."""
        table = self.orig.functions if sym.kind == "func" else self.orig.objects
        before = table.get(self.patched.ident(sym))
        return before.name if before is not None else sym.name

    def _symbol(self, key: tuple, sym: OutSymbol) -> int:
        if key not in self.by_key:
            self.by_key[key] = len(self.symbols)
            self.symbols.append(sym)
        return self.by_key[key]

    def _copy(self, sym: ObjSymbol) -> OutSymbol:
        assert isinstance(sym.shndx, int)
        name, bind = sym.name, sym.bind
        if sym.kind == "func" and self.patched.ident(sym) in self.replaced:
            # it replaces the binary's by name; an inline function of a header, emitted weak in every file
            # that uses it, stays weak: its copies from several files combine into one
            name, bind = self._replacement_name(sym), "weak" if sym.bind == "weak" else "global"
        kind = sym.kind if sym.kind in ("func", "object", "notype") else "notype"
        return OutSymbol(name, kind, bind, self.include[sym.shndx], sym.value, sym.size)

    def _define_symbols(self) -> None:
        """Every named symbol of an included section, referenced or not (the replaced functions first of all)."""
        for sym in self.patched.obj.symbols:
            if isinstance(sym.shndx, int) and sym.shndx in self.include and sym.name \
                    and sym.kind in ("func", "object", "notype") and ("idx", sym.index) not in self.by_key \
                    and not (sym.kind != "notype" and self._binds(sym)):
                self._symbol(("idx", sym.index), self._copy(sym))

    # -- call frame information -------------------------------------------
    def _eh_frame(self) -> None:
        """Keep the CIEs and the FDEs of included code; FDE->CIE pointers recomputed after the cut."""
        obj = self.patched.obj
        index = next((i for i, s in obj.sections.items() if s.name == EH_FRAME), None)
        if index is None:
            return
        data = obj.sections[index].data
        relocs = {r.r_offset: r for r in obj.relocations.get(index, [])}
        out, out_relocs, moved = bytearray(), [], {}
        pos = 0
        while pos + 4 <= len(data):
            length = struct.unpack_from("<I", data, pos)[0]
            if length == 0:
                break
            end = pos + 4 + length
            cie_id = struct.unpack_from("<I", data, pos + 4)[0]
            keep = cie_id == 0
            if not keep:
                begin = relocs.get(pos + 8)
                target = self._section_of(begin.r_sym) if begin else None
                keep = target in self.include
            if keep:
                moved[pos] = len(out)
                record = bytearray(data[pos:end])
                if cie_id:
                    cie = pos + 4 - cie_id
                    struct.pack_into("<I", record, 4, len(out) + 4 - moved[cie])
                for off in range(pos, end):
                    if off in relocs:
                        out_relocs.append((off - pos + len(out), relocs[off]))
                out += record
            pos = end
        self.include[index] = len(self.sections)
        sec = obj.sections[index]
        self.sections.append(OutSection(sec.name, sec.sh_type, sec.sh_flags, sec.sh_addralign, bytes(out)))
        for _off, r in out_relocs:   # what the kept entries reach (an LSDA's table) goes in too
            target, _o, there = self.patched.reach(index, r)
            if target is not None and target not in self.include and not self._binds(there):
                self._add_section(target)
        self._eh_index, self._eh_relocs = index, out_relocs
