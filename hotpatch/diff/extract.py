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

from hotpatch.diff.compare import Changes, Unit, normal_name
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
    picks: dict[str, str]                                   # file-local name -> its source file
    replaced: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)


def extract(orig: Unit, patched: Unit, changes: Changes, source: str) -> Extracted:
    return _Extractor(orig, patched, changes, source).run()


class _Extractor:
    def __init__(self, orig: Unit, patched: Unit, changes: Changes, source: str):
        self.orig, self.patched, self.changes, self.source = orig, patched, changes, source
        self.file = source.rsplit("/", 1)[-1]
        self.wanted = {normal_name(n) for n in changes.changed + changes.new}
        self.new_data = {normal_name(n) for n in changes.new_data}
        self.include: dict[int, int] = {}          # patched section index -> output section index
        self.sections: list[OutSection] = []
        self.symbols: list[OutSymbol] = []
        self.by_key: dict[tuple, int] = {}          # ("sec", i) / ("sym", name) / ("idx", i) -> output symbol
        self.picks: dict[str, str] = {}
        self._eh_index: int | None = None
        self._eh_relocs: list = []

    # -- what goes in ---------------------------------------------------
    def run(self) -> Extracted:
        roots = [self.patched.functions[normal_name(n)] for n in self.changes.changed + self.changes.new
                 if not _COLD.search(n)]
        work = [r.shndx for r in roots]
        for index in work:
            assert isinstance(index, int)
            self._add_section(index)
        pending = list(self.include)
        while pending:
            index = pending.pop()
            for r in self.patched.obj.relocations.get(index, []):
                target = self._section_of(r.r_sym)
                if target is not None and target not in self.include and self._included(target):
                    self._add_section(target)
                    pending.append(target)
        self._eh_frame()
        for index, out in list(self.include.items()):
            relocs = self._eh_relocs if index == self._eh_index else \
                [(r.r_offset, r) for r in self.patched.obj.relocations.get(index, [])]
            self.sections[out].relocations = [(off, r.r_type, *self._reference(r.r_sym, r.r_addend))
                                              for off, r in relocs]
        self._define_symbols()
        replaced = [self._binary_name(self.patched.functions[normal_name(n)])
                    for n in self.changes.changed if not _COLD.search(n)]
        new = [n for n in self.changes.new if not _COLD.search(n)]
        return Extracted(write_relocatable(E_MACHINE[self.patched.obj.machine], self.sections, self.symbols),
                         self.picks, replaced, new)

    def _section_of(self, sym_index: int) -> int | None:
        shndx = self.patched.obj.symbols[sym_index].shndx
        return shndx if isinstance(shndx, int) and shndx else None

    def _included(self, index: int) -> bool:
        """A referenced section goes in unless the running binary has the same thing."""
        owner = self.patched.owner.get(index)
        if owner is None:
            return True   # literals, anonymous constants, jump tables
        name = normal_name(owner.name)
        if owner.kind == "func":
            return name in self.wanted
        if name in self.new_data:
            return True
        before = self.orig.objects.get(name)
        if before is None:
            return True
        same = self.orig.key(before.shndx) == self.patched.key(owner.shndx)   # type: ignore[arg-type]
        return not same and not self.patched.obj.sections[index].sh_flags & SHF_WRITE

    def _add_section(self, index: int) -> None:
        sec = self.patched.obj.sections[index]
        self.include[index] = len(self.sections)
        self.sections.append(OutSection(sec.name, sec.sh_type, sec.sh_flags & ~(SHF_MERGE | SHF_STRINGS | SHF_GROUP),
                                        sec.sh_addralign, sec.data, sec.sh_size))

    # -- references -------------------------------------------------------
    def _reference(self, sym_index: int, addend: int) -> tuple[int, int]:
        """(output symbol, addend) for a relocation against patched symbol `sym_index`."""
        sym = self.patched.obj.symbols[sym_index]
        if sym.shndx == "UND":
            return self._symbol(("sym", sym.name), OutSymbol(sym.name, "notype", sym.bind, None)), addend
        if not isinstance(sym.shndx, int):
            raise InvalidPatch(f"{self.source}: reference to {sym.name or 'a symbol'} in section {sym.shndx}")
        if sym.shndx in self.include:
            if sym.kind == "section":
                out = self.include[sym.shndx]
                return self._symbol(("sec", out), OutSymbol("", "section", "local", out)), addend
            return self._symbol(("idx", sym_index), self._copy(sym)), addend
        owner = sym if sym.kind != "section" else self.patched.owner.get(sym.shndx)
        if owner is None:
            raise InvalidPatch(f"{self.source}: code refers to section "
                               f"{self.patched.obj.sections[sym.shndx].name}, which has no symbol to bind")
        name = self._binary_name(owner)
        if owner.bind == "local":
            name = file_local(name, self.file)
        shift = owner.value if sym.kind == "section" else 0
        return self._symbol(("sym", name), OutSymbol(name, "notype", "global", None)), addend - shift

    def _binary_name(self, sym: ObjSymbol) -> str:
        """The name the running binary has for it: the original build's (clone numbers can differ)."""
        table = self.orig.functions if sym.kind == "func" else self.orig.objects
        before = table.get(normal_name(sym.name))
        return before.name if before is not None else sym.name

    def _pick(self, name: str) -> None:
        self.picks[name] = self.file

    def _symbol(self, key: tuple, sym: OutSymbol) -> int:
        if key not in self.by_key:
            self.by_key[key] = len(self.symbols)
            self.symbols.append(sym)
        return self.by_key[key]

    def _copy(self, sym: ObjSymbol) -> OutSymbol:
        assert isinstance(sym.shndx, int)
        replaced = sym.kind == "func" and normal_name(sym.name) in {normal_name(n) for n in self.changes.changed} \
            and not _COLD.search(sym.name)
        name, bind = sym.name, sym.bind
        if replaced:
            name = self._binary_name(sym)
            if bind == "local":
                self._pick(name)
                bind = "global"   # it replaces the binary's by name
        kind = sym.kind if sym.kind in ("func", "object", "notype") else "notype"
        return OutSymbol(name, kind, bind, self.include[sym.shndx], sym.value, sym.size)

    def _define_symbols(self) -> None:
        """Every named symbol of an included section, referenced or not (the replaced functions first of all)."""
        for sym in self.patched.obj.symbols:
            if isinstance(sym.shndx, int) and sym.shndx in self.include and sym.name \
                    and sym.kind in ("func", "object", "notype") and ("idx", sym.index) not in self.by_key:
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
            target = self._section_of(r.r_sym)
            if target is not None and target not in self.include and self._included(target):
                self._add_section(target)
        self._eh_index, self._eh_relocs = index, out_relocs
