"""Compare one translation unit's original and patched objects, function by function and object by object.

Both are compiled with -ffunction-sections, so each function has a section of
its own; variables share theirs (-fdata-sections would change the code on
AArch64, where section anchors address a file's statics from one base), so
each is compared as its range. An identity for the comparison is the bytes
with every relocated field zeroed, plus what each
relocation points at, described by meaning rather than position: a symbol's
name (compiler clone numbers and static-local counters removed), the string a
string-literal reference reads, the contents of an anonymous constant. Moved
offsets, renumbered clones and reordered literals then compare equal; a
changed callee inlined into a caller changes the caller's bytes, so it is
found changed too.
"""

import hashlib
import re
from dataclasses import dataclass, field

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from hotpatch.elf.relocatable import SHF_EXECINSTR, SHF_WRITE, SHT_NOBITS, ObjSymbol, RelocatableObject, Section

SHF_MERGE, SHF_STRINGS = 0x10, 0x20
_SUFFIX = re.compile(r"\.(constprop|isra|part|cold|lto_priv|localalias)\.\d+")
_COUNTER = re.compile(r"\.\d+$")
_COLD_SUFFIX = re.compile(r"\.cold(\.\d+)?$")
# x86-64 relocations relative to the next instruction: the field is not its last bytes when an immediate follows
_X86_PC_RELATIVE = {2, 4, 9, 41, 42}


def normal_name(name: str) -> str:
    """`f.constprop.3` -> `f.constprop`, `counter.1` -> `counter`: names that differ only by numbering."""
    return _COUNTER.sub("", _SUFFIX.sub(lambda m: "." + m.group(1), name))


@dataclass
class Unit:
    """One object: its named functions and variables, and where each lies (a section and a range)."""
    obj: RelocatableObject
    functions: dict[str, ObjSymbol] = field(default_factory=dict)   # ident -> symbol
    objects: dict[str, ObjSymbol] = field(default_factory=dict)
    placed: dict[int, list[ObjSymbol]] = field(default_factory=dict)  # section index -> its symbols by value
    _plural: set[str] = field(default_factory=set)   # normal names several symbols share
    _keys: dict[tuple[int, int, int], tuple] = field(default_factory=dict)
    _ends: dict[int, dict[int, int]] = field(default_factory=dict)
    _open: set[int] = field(default_factory=set)      # objects whose contents are being described

    @classmethod
    def of(cls, obj: RelocatableObject) -> "Unit":
        unit = cls(obj)
        named = [s for s in obj.symbols if isinstance(s.shndx, int) and s.name and s.kind in ("func", "object", "tls")]
        seen: set[str] = set()
        for sym in named:
            n = normal_name(sym.name)
            if n in seen:
                unit._plural.add(n)
            seen.add(n)
        for sym in named:
            table = unit.functions if sym.kind == "func" else unit.objects
            table.setdefault(unit.ident(sym), sym)
            unit.placed.setdefault(sym.shndx, []).append(sym)   # type: ignore[arg-type]
        for symbols in unit.placed.values():
            symbols.sort(key=lambda s: s.value)
        return unit

    def ident(self, sym: ObjSymbol) -> str:
        """What matches a symbol across the two builds: its name without compiler numbering when that is
        unique in the unit (clones renumbered), else its exact name (count.0 and count.1, two functions'
        statics; h.constprop.0 and h.constprop.1)."""
        n = normal_name(sym.name)
        return sym.name if n in self._plural else n

    def section(self, sym: ObjSymbol) -> Section:
        assert isinstance(sym.shndx, int)
        return self.obj.sections[sym.shndx]

    def symbol_at(self, index: int, offset: int) -> ObjSymbol | None:
        """The function or variable at `offset` of section `index` (one past its end counts: &a[N])."""
        found = None
        for sym in self.placed.get(index, []):
            if sym.value <= offset < sym.value + max(sym.size, 1):
                return sym
            if sym.value <= offset == sym.value + sym.size:
                found = sym
        return found

    def key_of(self, sym: ObjSymbol) -> tuple:
        """A function's or variable's identity: its bytes without relocated fields, and its relocations
        by meaning. Without -fdata-sections variables share sections: each is its own range."""
        assert isinstance(sym.shndx, int)
        return self.key(sym.shndx, sym.value, sym.value + sym.size)

    def key(self, index: int, start: int = 0, end: int | None = None) -> tuple:
        sec = self.obj.sections[index]
        end = sec.sh_size if end is None else end
        if (index, start, end) not in self._keys:
            self._keys[(index, start, end)] = self._key(index, start, end)
        return self._keys[(index, start, end)]

    def _key(self, index: int, start: int, end: int) -> tuple:
        sec = self.obj.sections[index]
        relocs = sorted((r for r in self.obj.relocations.get(index, []) if start <= r.r_offset < end),
                        key=lambda r: r.r_offset)
        data = bytearray(sec.data[start:end])
        described = []
        for r in relocs:
            at = r.r_offset - start
            _blank(data, at, r.r_type, self.obj.machine)
            described.append((at, r.r_type, self.target(r.r_sym, r.r_addend + self.skew(index, r))))
        size = end - start if sec.sh_type == SHT_NOBITS else None
        return (sec.sh_flags & (SHF_WRITE | SHF_EXECINSTR), size, bytes(data), tuple(described))

    def skew(self, index: int, r) -> int:
        """x86-64: what turns a PC-relative addend into the offset it reaches (the field's distance to the
        end of its instruction; -4 only when nothing follows the field)."""
        if self.obj.machine != "x86_64" or r.r_type not in _X86_PC_RELATIVE:
            return 0
        sec = self.obj.sections[index]
        if not sec.sh_flags & SHF_EXECINSTR:
            return 0   # data: the field is the whole value, the place its own address
        if index not in self._ends:
            self._ends[index] = _instruction_ends(sec)
        return self._ends[index].get(r.r_offset, r.r_offset + 4) - r.r_offset

    def reach(self, index: int, r) -> tuple[int | None, int, ObjSymbol | None]:
        """Relocation `r` of section `index`: the section it reaches, the offset there, and the function or
        variable there (None for a literal or anonymous data, or an undefined symbol)."""
        sym = self.obj.symbols[r.r_sym]
        if not isinstance(sym.shndx, int) or not sym.shndx:
            return None, 0, None
        if not _is_label(sym):
            return sym.shndx, sym.value, sym if sym.kind in ("func", "object", "tls") else None
        offset = sym.value + r.r_addend + self.skew(index, r)
        return sym.shndx, offset, self.symbol_at(sym.shndx, offset)

    def target(self, sym_index: int, offset: int) -> tuple:
        """What a relocation reaches, independent of where things were laid out."""
        sym = self.obj.symbols[sym_index]
        if not isinstance(sym.shndx, int):
            return ("sym", normal_name(sym.name), offset)
        if not _is_label(sym):
            return self._named(sym, offset) if sym.kind in ("func", "object", "tls") else ("sym", sym.name, offset)
        offset += sym.value
        owner = self.symbol_at(sym.shndx, offset)
        if owner is not None:
            return self._named(owner, offset - owner.value)
        sec = self.obj.sections[sym.shndx]
        if sec.sh_flags & SHF_STRINGS and 0 <= offset < len(sec.data):
            return ("str", sec.data[offset:sec.data.index(b"\0", offset) if b"\0" in sec.data[offset:]
                                    else len(sec.data)])
        return ("anon", self._anonymous(sym.shndx, offset))

    def _named(self, sym: ObjSymbol, offset: int) -> tuple:
        """A function or variable, by identity; a constant also by its contents (a changed table changes
        the code that reads it, though not one byte of that code differs)."""
        sec = self.obj.sections[sym.shndx]   # type: ignore[index]
        if sym.kind == "object" and not sec.sh_flags & (SHF_WRITE | SHF_EXECINSTR) and sym.index not in self._open:
            self._open.add(sym.index)   # tables may point at each other
            try:
                contents = hashlib.sha256(repr(self.key_of(sym)).encode()).hexdigest()
            finally:
                self._open.discard(sym.index)
            return ("sym", self.ident(sym), offset, contents)
        return ("sym", self.ident(sym), offset)

    def _anonymous(self, index: int, offset: int) -> str:
        """Unnamed data (a jump table, a constant pool) from `offset` to the next named thing, by its bytes
        and what its relocations name, one level deep (such data may point at itself)."""
        sec = self.obj.sections[index]
        after = [s.value for s in self.placed.get(index, []) if s.value > offset]
        end = min(after) if after else sec.sh_size
        relocs = [(r.r_offset - offset, r.r_type, self._shallow(r.r_sym), r.r_addend)
                  for r in self.obj.relocations.get(index, []) if offset <= r.r_offset < end]
        return hashlib.sha256(repr((sec.name.split(".")[1:2], sec.data[offset:end], relocs)).encode()).hexdigest()

    def _shallow(self, sym_index: int) -> str:
        sym = self.obj.symbols[sym_index]
        if _is_label(sym) and isinstance(sym.shndx, int):
            return self.obj.sections[sym.shndx].name
        return self.ident(sym) if isinstance(sym.shndx, int) and sym.kind in ("func", "object", "tls") \
            else normal_name(sym.name)


# AArch64 instruction relocations rewrite only an immediate field: the opcode and registers around it are
# compared (ldrb and ldrsb differ). Mask per r_type; data relocations (ABS64, PREL32...) cover their field.
_A64_IMM = {273: 0x00FFFFE0, 274: 0x60FFFFE0, 275: 0x60FFFFE0, 276: 0x60FFFFE0, 277: 0x003FFC00,
            278: 0x003FFC00, 279: 0x0007FFE0, 280: 0x00FFFFE0, 282: 0x03FFFFFF, 283: 0x03FFFFFF,
            284: 0x003FFC00, 285: 0x003FFC00, 286: 0x003FFC00, 299: 0x003FFC00, 311: 0x60FFFFE0,
            312: 0x003FFC00}


def _blank(data: bytearray, at: int, r_type: int, machine: str) -> None:
    """Zero what relocation `r_type` at `at` will write, and nothing else."""
    if machine == "aarch64" and r_type in _A64_IMM and at + 4 <= len(data):
        word = int.from_bytes(data[at:at + 4], "little") & ~_A64_IMM[r_type]
        data[at:at + 4] = word.to_bytes(4, "little")
        return
    width = 8 if r_type in (1, 24, 257, 260) else 4   # R_X86_64_64 / PC64, R_AARCH64_ABS64 / PREL64
    data[at:at + width] = bytes(min(width, len(data) - at))


def _is_label(sym: ObjSymbol) -> bool:
    """A section symbol, or a local label (.LC0): it names a place, not a function or variable."""
    return sym.kind == "section" or (sym.kind == "notype" and sym.bind == "local")


def _instruction_ends(sec: Section) -> dict[int, int]:
    """x86-64: for each byte offset inside an instruction, that instruction's end."""
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.skipdata = True
    ends = {}
    for address, size, _m, _o in md.disasm_lite(sec.data, 0):
        for off in range(address, address + size):
            ends[off] = address + size
    return ends


@dataclass
class Changes:
    changed: list[str]          # functions whose code differs (patched symbol names)
    new: list[str]              # functions only in the patched object
    gone: list[str]             # functions only in the original
    new_data: list[str]
    refusals: list[str]         # what cannot be patched live, each a sentence


def compare(orig: Unit, patched: Unit, source: str) -> Changes:
    changed, new = [], []
    for name, sym in patched.functions.items():
        before = orig.functions.get(name)
        if before is None:
            new.append(sym.name)
        elif orig.key_of(before) != patched.key_of(sym):
            changed.append(sym.name)
    for name in list(changed):   # a cold part is reached only from its function: that goes in with it
        parent = _COLD_SUFFIX.sub("", name)
        if parent != name and parent in {s.name for s in patched.functions.values()} and parent not in changed:
            changed.append(parent)
    gone = [sym.name for name, sym in orig.functions.items() if name not in patched.functions]
    new_data, refusals = [], []
    for name, sym in patched.objects.items():
        before = orig.objects.get(name)
        if before is None:
            new_data.append(sym.name)
            continue
        sec = patched.section(sym)
        if sym.kind == "tls" and orig.key_of(before) != patched.key_of(sym):
            refusals.append(f"{source}: thread-local variable {sym.name} changed")
        elif sym.size != before.size:
            refusals.append(f"{source}: {sym.name} changed size ({before.size} -> {sym.size} bytes): "
                            "existing data cannot change layout in a running process")
        elif sec.sh_flags & SHF_WRITE and orig.key_of(before) != patched.key_of(sym):
            refusals.append(f"{source}: the initial value of {sym.name} changed: the running process "
                            "already holds its current value")
    return Changes(changed, new, gone, new_data, refusals)
