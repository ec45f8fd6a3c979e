"""The patch's code: one ELF relocatable object, parsed into plain records.

Everything is validated here, where untrusted bytes enter: offsets, sizes and
indexes are checked so that the linker can trust what it is given.
"""

import io
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from hotpatch.elf.image import MACHINE_NAMES
from hotpatch.errors import ELFFormatError

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_TLS = 0x1, 0x2, 0x4, 0x400
SHT_PROGBITS, SHT_SYMTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 1, 2, 4, 8, 9
MAX_SECTION_SIZE = 1 << 30

_SPECIAL_SHNDX = {"SHN_UNDEF": "UND", "SHN_ABS": "ABS", "SHN_COMMON": "COMMON"}


@dataclass
class Section:
    index: int
    name: str
    sh_type: int
    sh_flags: int
    sh_addralign: int
    sh_size: int
    data: bytes  # empty for SHT_NOBITS

    @property
    def alloc(self) -> bool:
        return bool(self.sh_flags & SHF_ALLOC)


@dataclass(frozen=True)
class ObjSymbol:
    index: int
    name: str
    value: int
    size: int
    kind: str   # STT_* without the prefix, lower case: func, object, section, notype, tls, ...
    bind: str   # local, global, weak
    shndx: int | str  # section index, or UND / ABS / COMMON


@dataclass(frozen=True)
class Relocation:
    r_offset: int
    r_type: int
    r_sym: int
    r_addend: int


@dataclass
class RelocatableObject:
    machine: str
    sections: dict[int, Section]
    symbols: list[ObjSymbol]
    relocations: dict[int, list[Relocation]] = field(default_factory=dict)

    def defined_functions(self) -> list[ObjSymbol]:
        return [s for s in self.symbols if s.kind == "func" and isinstance(s.shndx, int)]


def _symbol_shndx(raw) -> int | str:
    if isinstance(raw, int):
        return raw
    if raw in _SPECIAL_SHNDX:
        return _SPECIAL_SHNDX[raw]
    raise ELFFormatError(f"unsupported symbol section index {raw}")


def parse_relocatable(data: bytes) -> RelocatableObject:
    try:
        return _parse(data)
    except ELFFormatError:
        raise
    except (ELFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            OverflowError, AssertionError, MemoryError, UnicodeDecodeError,
            RecursionError) as e:
        # pyelftools raises a zoo of exceptions on corrupt input; one kind leaves here.
        raise ELFFormatError(f"corrupt ELF object: {type(e).__name__}: {e}") from e
    except Exception as e:  # construct's StreamError and friends
        raise ELFFormatError(f"corrupt ELF object: {type(e).__name__}: {e}") from e


def _parse(data: bytes) -> RelocatableObject:
    if data[:4] != b"\x7fELF":
        raise ELFFormatError("not an ELF object")
    if len(data) < 64 or data[4] != 2 or data[5] != 1:
        raise ELFFormatError("only little-endian 64-bit ELF objects are supported")
    elf = ELFFile(io.BytesIO(data))
    if elf.header["e_type"] != "ET_REL":
        raise ELFFormatError(f"not a relocatable object (e_type {elf.header['e_type']})")
    machine_num = {"EM_X86_64": 62, "EM_AARCH64": 183}.get(elf.header["e_machine"])
    if machine_num is None:
        raise ELFFormatError(f"unsupported machine {elf.header['e_machine']}")
    nsections = elf.num_sections()
    if nsections > 65535:
        raise ELFFormatError("too many sections")
    sections: dict[int, Section] = {}
    symtab_index = None
    rela_indexes = []
    for index in range(nsections):
        sec = elf.get_section(index)
        h = sec.header
        sh_type = h["sh_type"]
        type_num = sh_type if isinstance(sh_type, int) else _SHT.get(sh_type, -1)
        size = h["sh_size"]
        if size > MAX_SECTION_SIZE:
            raise ELFFormatError(f"section {sec.name!r} is too large ({size} bytes)")
        if type_num == SHT_NOBITS:
            content = b""
        else:
            if h["sh_offset"] + size > len(data):
                raise ELFFormatError(f"section {sec.name!r} extends past the end of the file")
            content = data[h["sh_offset"]:h["sh_offset"] + size]
        align = h["sh_addralign"] or 1
        if align & (align - 1) or align > 1 << 16:
            raise ELFFormatError(f"section {sec.name!r} has a bad alignment {align}")
        sections[index] = Section(index, sec.name, type_num, h["sh_flags"], align, size, content)
        if type_num == SHT_SYMTAB:
            if symtab_index is not None:
                raise ELFFormatError("more than one symbol table")
            symtab_index = index
        elif type_num == SHT_RELA:
            rela_indexes.append(index)
        elif type_num == SHT_REL and sections[index].sh_size:
            raise ELFFormatError(f"SHT_REL section {sec.name!r}: x86-64 and AArch64 objects use RELA")
    if symtab_index is None:
        raise ELFFormatError("no symbol table")
    symbols = []
    symtab = elf.get_section(symtab_index)
    if not isinstance(symtab, SymbolTableSection):
        raise ELFFormatError("the symbol table cannot be read")
    for i, sym in enumerate(symtab.iter_symbols()):
        info = sym["st_info"]
        kind = info["type"].removeprefix("STT_").lower() if isinstance(info["type"], str) else "unknown"
        bind = info["bind"].removeprefix("STB_").lower() if isinstance(info["bind"], str) else "unknown"
        if bind == "gnu_unique" or bind == "loos":
            bind = "global"
        if kind == "loos":
            kind = "gnu_ifunc"
        shndx = _symbol_shndx(sym["st_shndx"])
        if isinstance(shndx, int) and shndx not in sections:
            raise ELFFormatError(f"symbol {sym.name!r} refers to section {shndx}, which does not exist")
        symbols.append(ObjSymbol(i, sym.name, sym["st_value"], sym["st_size"], kind, bind, shndx))
    relocations: dict[int, list[Relocation]] = {}
    for index in rela_indexes:
        sec = elf.get_section(index)
        if not isinstance(sec, RelocationSection):
            raise ELFFormatError(f"relocation section {sec.name!r} cannot be read")
        target = sec.header["sh_info"]
        if sec.header["sh_link"] != symtab_index:
            raise ELFFormatError(f"relocation section {sec.name!r} does not use the symbol table")
        if target not in sections:
            raise ELFFormatError(f"relocation section {sec.name!r} applies to a missing section")
        if sec.header["sh_entsize"] != 24:
            raise ELFFormatError(f"relocation section {sec.name!r} has entries of {sec.header['sh_entsize']} bytes")
        relocs = []
        for r in sec.iter_relocations():
            sym_index = r["r_info_sym"]
            if sym_index >= len(symbols):
                raise ELFFormatError(f"relocation in {sec.name!r} names symbol {sym_index}, past the table")
            if r["r_offset"] >= max(sections[target].sh_size, 1):
                raise ELFFormatError(f"relocation in {sec.name!r} lies outside its section")
            relocs.append(Relocation(r["r_offset"], r["r_info_type"], sym_index, r["r_addend"]))
        relocations.setdefault(target, []).extend(relocs)
    return RelocatableObject(MACHINE_NAMES[machine_num], sections, symbols, relocations)


_SHT = {"SHT_NULL": 0, "SHT_PROGBITS": 1, "SHT_SYMTAB": 2, "SHT_STRTAB": 3, "SHT_RELA": 4,
        "SHT_HASH": 5, "SHT_DYNAMIC": 6, "SHT_NOTE": 7, "SHT_NOBITS": 8, "SHT_REL": 9,
        "SHT_DYNSYM": 11, "SHT_INIT_ARRAY": 14, "SHT_FINI_ARRAY": 15, "SHT_PREINIT_ARRAY": 16,
        "SHT_GROUP": 17, "SHT_SYMTAB_SHNDX": 18, "SHT_X86_64_UNWIND": 0x70000001,
        "SHT_GNU_ATTRIBUTES": 0x6ffffff5, "SHT_GNU_HASH": 0x6ffffff6,
        "SHT_GNU_verdef": 0x6ffffffd, "SHT_GNU_verneed": 0x6ffffffe, "SHT_GNU_versym": 0x6fffffff,
        "SHT_ARM_ATTRIBUTES": 0x70000003, "SHT_LLVM_ADDRSIG": 0x6fff4c03}
