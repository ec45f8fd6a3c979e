"""ELF64 headers, program headers and build-id notes, parsed from raw bytes.

Used on files and on memory read from a live process alike, so it takes
`read(offset, size) -> bytes` rather than a path. Kept free of pyelftools: it
runs on every apply and must be cheap.
"""

import struct
from dataclasses import dataclass
from typing import Callable

from hotpatch.errors import ELFFormatError

ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_TLS = 1, 2, 3, 4, 7
PF_X, PF_W, PF_R = 1, 2, 4
NT_GNU_BUILD_ID = 3
EM_X86_64, EM_AARCH64 = 62, 183
MACHINE_NAMES = {EM_X86_64: "x86_64", EM_AARCH64: "aarch64"}

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")

Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class ElfHeader:
    e_type: int
    e_machine: int
    e_entry: int
    e_phoff: int
    e_shoff: int
    e_phentsize: int
    e_phnum: int
    e_shentsize: int
    e_shnum: int
    e_shstrndx: int

    @property
    def machine(self) -> str:
        return MACHINE_NAMES.get(self.e_machine, f"machine {self.e_machine}")


@dataclass(frozen=True)
class ProgramHeader:
    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_align: int


def parse_ehdr(data: bytes) -> ElfHeader:
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
        raise ELFFormatError("not an ELF file")
    ident = data[:16]
    if ident[4] != 2 or ident[5] != 1:
        raise ELFFormatError("only little-endian 64-bit ELF is supported")
    (_, e_type, e_machine, _, e_entry, e_phoff, e_shoff, _, _, e_phentsize,
     e_phnum, e_shentsize, e_shnum, e_shstrndx) = _EHDR.unpack_from(data)
    return ElfHeader(e_type, e_machine, e_entry, e_phoff, e_shoff, e_phentsize,
                     e_phnum, e_shentsize, e_shnum, e_shstrndx)


def read_phdrs(read: Reader, ehdr: ElfHeader) -> list[ProgramHeader]:
    if ehdr.e_phnum == 0:
        return []
    if ehdr.e_phentsize != _PHDR.size or ehdr.e_phnum > 4096:
        raise ELFFormatError("bad program header table")
    data = read(ehdr.e_phoff, _PHDR.size * ehdr.e_phnum)
    if len(data) < _PHDR.size * ehdr.e_phnum:
        raise ELFFormatError("truncated program header table")
    return [ProgramHeader(*t) for t in _PHDR.iter_unpack(data)]


def parse_notes(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, type, desc) of each note, 4-byte aligned as ELF64 notes are in practice."""
    notes, pos = [], 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        pos += 12
        name_end = pos + ((namesz + 3) & ~3)
        desc_end = name_end + ((descsz + 3) & ~3)
        if desc_end > len(data) + 3:
            break
        name = data[pos:pos + namesz].rstrip(b"\0").decode("ascii", "replace")
        notes.append((name, ntype, data[name_end:name_end + descsz]))
        pos = desc_end
    return notes


def build_id_from_notes(data: bytes) -> str | None:
    for name, ntype, desc in parse_notes(data):
        if name == "GNU" and ntype == NT_GNU_BUILD_ID:
            return desc.hex()
    return None


def load_bias(map_start: int, phdrs: list[ProgramHeader]) -> int:
    """Load bias of a module whose file offset 0 is mapped at map_start."""
    loads = [p for p in phdrs if p.p_type == PT_LOAD]
    if not loads:
        raise ELFFormatError("no PT_LOAD segment")
    first = min(loads, key=lambda p: p.p_vaddr)
    return map_start - (first.p_vaddr - first.p_offset)


@dataclass(frozen=True)
class ElfImage:
    """Headers of an ELF file or of a module mapped in memory."""

    ehdr: ElfHeader
    phdrs: list[ProgramHeader]
    build_id: str | None

    @classmethod
    def from_file_reader(cls, read: Reader) -> "ElfImage":
        ehdr = parse_ehdr(read(0, _EHDR.size))
        phdrs = read_phdrs(read, ehdr)
        build_id = None
        for p in phdrs:
            if p.p_type == PT_NOTE and p.p_filesz < 1 << 20:
                build_id = build_id_from_notes(read(p.p_offset, p.p_filesz))
                if build_id:
                    break
        return cls(ehdr, phdrs, build_id)

    @classmethod
    def from_memory_reader(cls, read: Reader, map_start: int) -> "ElfImage":
        """`read` takes absolute addresses; map_start is where file offset 0 is mapped."""
        ehdr = parse_ehdr(read(map_start, _EHDR.size))
        phdrs = read_phdrs(lambda off, n: read(map_start + off, n), ehdr)
        bias = load_bias(map_start, phdrs)
        build_id = None
        for p in phdrs:
            if p.p_type == PT_NOTE and p.p_filesz < 1 << 20:
                build_id = build_id_from_notes(read(bias + p.p_vaddr, p.p_filesz))
                if build_id:
                    break
        return cls(ehdr, phdrs, build_id)

    @classmethod
    def from_path(cls, path: str) -> "ElfImage":
        with open(path, "rb") as f:
            def read(off: int, n: int) -> bytes:
                f.seek(off)
                return f.read(n)
            return cls.from_file_reader(read)

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        for p in self.phdrs:
            if p.p_type == PT_LOAD and p.p_vaddr <= vaddr < p.p_vaddr + p.p_filesz:
                return vaddr - p.p_vaddr + p.p_offset
        return None

    @property
    def is_pie(self) -> bool:
        return self.ehdr.e_type == ET_DYN
