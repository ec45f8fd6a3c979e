"""Compare one translation unit's original and patched objects, function by function and object by object.

Both are compiled with -ffunction-sections -fdata-sections, so each function
and each variable has a section of its own. A section's identity for the
comparison is its bytes with every relocated field zeroed, plus what each
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
# x86-64 relocations relative to the next instruction: the field is not its last bytes when an immediate follows
_X86_PC_RELATIVE = {2, 4, 9, 41, 42}


def normal_name(name: str) -> str:
    """`f.constprop.3` -> `f.constprop`, `counter.1` -> `counter`: names that differ only by numbering."""
    return _COUNTER.sub("", _SUFFIX.sub(lambda m: "." + m.group(1), name))


@dataclass
class Unit:
    """One object: its named functions and variables, each with the section it alone occupies."""
    obj: RelocatableObject
    functions: dict[str, ObjSymbol] = field(default_factory=dict)   # normal name -> symbol
    objects: dict[str, ObjSymbol] = field(default_factory=dict)
    owner: dict[int, ObjSymbol] = field(default_factory=dict)       # section index -> its named symbol
    _keys: dict[int, tuple] = field(default_factory=dict)

    @classmethod
    def of(cls, obj: RelocatableObject) -> "Unit":
        unit = cls(obj)
        for sym in obj.symbols:
            if not isinstance(sym.shndx, int) or not sym.name or sym.kind not in ("func", "object", "tls"):
                continue
            table = unit.functions if sym.kind == "func" else unit.objects
            table.setdefault(normal_name(sym.name), sym)
            unit.owner.setdefault(sym.shndx, sym)
        return unit

    def section(self, sym: ObjSymbol) -> Section:
        assert isinstance(sym.shndx, int)
        return self.obj.sections[sym.shndx]

    def key(self, index: int) -> tuple:
        """The section's identity: bytes without relocated fields, and the relocations by meaning."""
        if index not in self._keys:
            self._keys[index] = self._key(index)
        return self._keys[index]

    def _key(self, index: int) -> tuple:
        sec = self.obj.sections[index]
        relocs = sorted(self.obj.relocations.get(index, []), key=lambda r: r.r_offset)
        data = bytearray(sec.data)
        ends = _instruction_ends(sec) if self.obj.machine == "x86_64" and sec.sh_flags & SHF_EXECINSTR \
            and any(r.r_type in _X86_PC_RELATIVE for r in relocs) else {}
        described = []
        for r in relocs:
            width = 8 if r.r_type in (1, 24, 257) else 4   # R_X86_64_64 / PC64, R_AARCH64_ABS64
            data[r.r_offset:r.r_offset + width] = bytes(min(width, len(data) - r.r_offset))
            skew = ends.get(r.r_offset, r.r_offset + 4) - r.r_offset if r.r_type in _X86_PC_RELATIVE \
                and self.obj.machine == "x86_64" else 0
            described.append((r.r_offset, r.r_type, self.target(r.r_sym, r.r_addend + skew)))
        size = sec.sh_size if sec.sh_type == SHT_NOBITS else None
        return (sec.sh_flags & (SHF_WRITE | SHF_EXECINSTR), size, bytes(data), tuple(described))

    def target(self, sym_index: int, offset: int) -> tuple:
        """What a relocation reaches, independent of where things were laid out."""
        sym = self.obj.symbols[sym_index]
        label = sym.kind == "section" or (sym.kind == "notype" and sym.bind == "local")   # .LC0, .L...
        if not isinstance(sym.shndx, int) or not label:
            return ("sym", normal_name(sym.name), offset)
        offset += sym.value
        owner = self.owner.get(sym.shndx)
        if owner is not None:
            return ("sym", normal_name(owner.name), offset - owner.value)
        sec = self.obj.sections[sym.shndx]
        if sec.sh_flags & SHF_STRINGS and 0 <= offset < len(sec.data):
            return ("str", sec.data[offset:sec.data.index(b"\0", offset) if b"\0" in sec.data[offset:]
                                    else len(sec.data)])
        return ("anon", hashlib.sha256(repr(self.key(sym.shndx)).encode()).hexdigest(), offset)


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
        elif orig.key(before.shndx) != patched.key(sym.shndx):   # type: ignore[arg-type]
            changed.append(sym.name)
    gone = [sym.name for name, sym in orig.functions.items() if name not in patched.functions]
    new_data, refusals = [], []
    for name, sym in patched.objects.items():
        before = orig.objects.get(name)
        if before is None:
            new_data.append(sym.name)
            continue
        sec = patched.section(sym)
        if sym.kind == "tls" and orig.key(before.shndx) != patched.key(sym.shndx):  # type: ignore[arg-type]
            refusals.append(f"{source}: thread-local variable {sym.name} changed")
        elif sym.size != before.size:
            refusals.append(f"{source}: {sym.name} changed size ({before.size} -> {sym.size} bytes): "
                            "existing data cannot change layout in a running process")
        elif sec.sh_flags & SHF_WRITE and orig.key(before.shndx) != patched.key(sym.shndx):  # type: ignore
            refusals.append(f"{source}: the initial value of {sym.name} changed: the running process "
                            "already holds its current value")
    return Changes(changed, new, gone, new_data, refusals)
