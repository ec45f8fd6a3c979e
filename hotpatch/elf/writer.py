"""Write an ELF64 little-endian relocatable object: the patch `build --diff` extracts.

Only what a patch needs: PROGBITS/NOBITS sections with their RELA
relocations, one symbol table (locals first, as the ABI requires), string
tables. Section and symbol indexes in the input are positions in the lists.
"""

import struct
from dataclasses import dataclass, field

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS = 1, 2, 3, 4, 8
SHF_INFO_LINK = 0x40
_BINDS = {"local": 0, "global": 1, "weak": 2}
_KINDS = {"notype": 0, "object": 1, "func": 2, "section": 3, "file": 4}
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
RELA = struct.Struct("<QQq")


@dataclass
class OutSection:
    name: str
    sh_type: int
    sh_flags: int
    sh_addralign: int
    data: bytes = b""
    size: int = 0                    # for SHT_NOBITS (otherwise len(data))
    relocations: list[tuple[int, int, int, int]] = field(default_factory=list)  # offset, type, symbol, addend


@dataclass
class OutSymbol:
    name: str
    kind: str                        # notype, object, func, section, file
    bind: str                        # local, global, weak
    section: int | None              # index into the section list; None: undefined
    value: int = 0
    size: int = 0


class _Strings:
    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self.offsets: dict[str, int] = {"": 0}

    def add(self, name: str) -> int:
        if name not in self.offsets:
            self.offsets[name] = len(self.data)
            self.data += name.encode() + b"\0"
        return self.offsets[name]


def write_relocatable(e_machine: int, sections: list[OutSection], symbols: list[OutSymbol]) -> bytes:
    order = sorted(range(len(symbols)), key=lambda i: symbols[i].bind != "local")   # stable: locals first
    new_index = {old: new + 1 for new, old in enumerate(order)}
    first_global = 1 + sum(1 for s in symbols if s.bind == "local")
    strtab, shstrtab = _Strings(), _Strings()

    headers: list[tuple] = [(0,) * 10]
    blobs: list[bytes] = [b""]

    def add(name: str, sh_type: int, flags: int, data: bytes, link: int = 0, info: int = 0,
            align: int = 1, entsize: int = 0, size: int | None = None) -> int:
        headers.append((shstrtab.add(name), sh_type, flags, 0, 0, len(data) if size is None else size,
                        link, info, align, entsize))
        blobs.append(b"" if sh_type == SHT_NOBITS else data)
        return len(headers) - 1

    base = len(headers)
    for s in sections:
        add(s.name, s.sh_type, s.sh_flags, s.data, align=s.sh_addralign,
            size=s.size if s.sh_type == SHT_NOBITS else None)
    symtab_index = base + len(sections) + sum(1 for s in sections if s.relocations)
    for i, s in enumerate(sections):
        if s.relocations:
            rela = b"".join(RELA.pack(off, new_index[sym] << 32 | rtype, addend)
                            for off, rtype, sym, addend in sorted(s.relocations))
            add(".rela" + s.name, SHT_RELA, SHF_INFO_LINK, rela, link=symtab_index, info=base + i,
                align=8, entsize=RELA.size)
    symdata = bytearray(SYM.size)
    for old in order:
        sym = symbols[old]
        shndx = 0 if sym.section is None else base + sym.section
        name = 0 if sym.kind == "section" else strtab.add(sym.name)
        symdata += SYM.pack(name, _BINDS[sym.bind] << 4 | _KINDS[sym.kind], 0, shndx, sym.value, sym.size)
    strtab_index = symtab_index + 1
    assert add(".symtab", SHT_SYMTAB, 0, bytes(symdata), link=strtab_index, info=first_global, align=8,
               entsize=SYM.size) == symtab_index
    add(".strtab", SHT_STRTAB, 0, bytes(strtab.data))
    shstrtab_index = len(headers)
    shstrtab.add(".shstrtab")
    add(".shstrtab", SHT_STRTAB, 0, bytes(shstrtab.data))

    out = bytearray(EHDR.size)
    finished = [headers[0]]
    for h, blob in zip(headers[1:], blobs[1:]):
        align = max(h[8], 1)
        out += b"\0" * (-len(out) % align)
        finished.append(h[:4] + (len(out),) + h[5:])
        out += blob
    out += b"\0" * (-len(out) % 8)
    shoff = len(out)
    for h in finished:
        out += SHDR.pack(*h)
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    out[:EHDR.size] = EHDR.pack(ident, 1, e_machine, 1, 0, 0, shoff, 0, EHDR.size, 0, 0, SHDR.size,
                                len(finished), shstrtab_index)
    return bytes(out)
