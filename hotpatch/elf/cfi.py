"""Call frame information (CFI) of one ELF module: the unwind rule at any of its addresses.

Sources, in this order: `.eh_frame`, found through the binary-search table of
`.eh_frame_hdr` (PT_GNU_EH_FRAME) when there is one, else through an index of
its FDEs built once; then `.debug_frame` of a debug file, when one is given.
Only the FDEs a walk needs are parsed, each once; each address's rule is kept,
so a second lookup of the same pc is one dict hit.

pyelftools parses the entries (elftools.dwarf.callframe: CIE and FDE headers,
augmentations, instruction lists). Written here is what it lacks: the
`.eh_frame_hdr` table and the pointer encodings it uses, finding one FDE
without parsing the whole section, and the rows: pyelftools' get_decoded()
fails on DW_CFA_GNU_args_size (in 2% of libc's FDEs, 70 of libstdc++'s) and
scales DW_CFA_def_cfa_sf by the code alignment factor instead of the data one;
its CIE parser refuses the augmentation "S" GAS writes into .debug_frame.

Addresses here are link-time addresses (a pc minus the module's load bias).
"""

import bisect
import io
import mmap
import struct
from typing import Callable, NamedTuple

from elftools.common.exceptions import ELFError
from elftools.dwarf.callframe import CIE, FDE, CallFrameInfo
from elftools.dwarf.structs import DWARFStructs
from elftools.elf.elffile import ELFFile

from hotpatch.elf.image import PT_LOAD, ElfImage, ProgramHeader, load_bias, parse_ehdr, read_phdrs
from hotpatch.elf.sections import section_data
from hotpatch.errors import ELFFormatError

PT_GNU_EH_FRAME = 0x6474E550
U64 = (1 << 64) - 1

# How a register of the caller is recovered (DWARF 5, 6.4.1 "register rules").
UNDEFINED, SAME_VALUE, OFFSET, VAL_OFFSET, REGISTER, EXPRESSION, VAL_EXPRESSION = range(7)
RULE_FORMATS = ("undefined", "same", "c{:+d}", "v{:+d}", "r{}", "exp", "vexp")   # readelf -wF's notation

# DW_EH_PE_* pointer encodings (LSB 10.5, "DWARF Exception Header Encoding").
DW_EH_PE_absptr, DW_EH_PE_omit = 0x00, 0xFF
DW_EH_PE_pcrel, DW_EH_PE_datarel = 0x10, 0x30
_EH_PE_FORMATS = {0x00: "<Q", 0x02: "<H", 0x03: "<I", 0x04: "<Q", 0x0A: "<h", 0x0B: "<i", 0x0C: "<q"}
_TABLE_DATAREL_SDATA4 = 0x3B   # what GNU ld, gold, lld and mold write for the search table

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class FrameRule(NamedTuple):
    """How to find the caller's registers at one address: compact, hashable, shared by equal rows.

    The CFA (canonical frame address) is `cfa_register` + `cfa_offset`, or the
    value of `cfa_expression` (then cfa_register is -1). `saved` lists the
    registers that have a rule, as (register, how, argument): how is one of
    UNDEFINED, SAME_VALUE, OFFSET (saved at CFA + argument), VAL_OFFSET (value
    is CFA + argument), REGISTER (in register `argument`), EXPRESSION (saved at
    the address the expression computes, the CFA pushed first), VAL_EXPRESSION;
    a register without a rule keeps its value. `return_column` holds the
    return address; `signal_frame` is the CIE's 'S' augmentation: the caller's
    pc is exact, not a return address.
    """
    cfa_register: int
    cfa_offset: int
    cfa_expression: bytes | None
    saved: tuple[tuple[int, int, int | bytes], ...]
    return_column: int
    signal_frame: bool

    def describe(self) -> str:
        """'cfa=r7+16 r3=c-16 r16=c-8 ra=r16', in readelf -wF's notation (registers by DWARF number)."""
        cfa = f"r{self.cfa_register}{self.cfa_offset:+d}" if self.cfa_expression is None else "exp"
        regs = "".join(f" r{reg}={RULE_FORMATS[how].format(arg)}" for reg, how, arg in self.saved)
        return f"cfa={cfa}{regs} ra=r{self.return_column}" + (" signal" if self.signal_frame else "")


def decode_pointer(data: bytes, pos: int, encoding: int, pc_base: int, data_base: int | None) -> tuple[int, int]:
    """(value, position after it) of a DW_EH_PE-encoded pointer at data[pos].

    pc_base is the address of data[0] (for pcrel), data_base that of the
    section datarel is relative to (.eh_frame_hdr). textrel, funcrel, aligned
    and indirect pointers do not occur in x86-64 or aarch64 unwind tables.
    """
    if encoding == DW_EH_PE_omit:
        raise ELFFormatError("omitted pointer where one is required")
    fmt, application = encoding & 0x0F, encoding & 0x70
    if encoding & 0x80 or application not in (0, DW_EH_PE_pcrel, DW_EH_PE_datarel):
        raise ELFFormatError(f"unsupported pointer encoding {encoding:#x}")
    start = pos
    if fmt in (0x01, 0x09):   # uleb128, sleb128
        value, shift = 0, 0
        while True:
            if pos >= len(data):
                raise ELFFormatError("truncated LEB128")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if fmt == 0x09 and byte & 0x40:
            value -= 1 << shift
    else:
        form = _EH_PE_FORMATS.get(fmt)
        if form is None:
            raise ELFFormatError(f"unsupported pointer encoding {encoding:#x}")
        size = struct.calcsize(form)
        if pos + size > len(data):
            raise ELFFormatError("truncated pointer")
        value = struct.unpack_from(form, data, pos)[0]
        pos += size
    if application == DW_EH_PE_pcrel:
        value += pc_base + start
    elif application == DW_EH_PE_datarel:
        if data_base is None:
            raise ELFFormatError("datarel pointer without a data base")
        value += data_base
    return value & U64, pos


class _Section(NamedTuple):
    data: bytes
    address: int     # link-time address of data[0] (0 for .debug_frame)
    eh: bool         # .eh_frame (pointer encodings, CIE id 0) rather than .debug_frame


class _Rows(NamedTuple):
    starts: list[int]
    rules: list[FrameRule]
    end: int


_CIE_ID_32, _CIE_ID_64 = 0xFFFFFFFF, U64


class CallFrameTable:
    """The CFI of one module, file or memory image; lookups by link-time address.

    Build with from_path() (a file, and its debug file), from_memory() (the
    vdso), from_bytes() (an ELF file's bytes) or from_eh_frame() (a bare
    .eh_frame: a patch image's). prepare() does the reading up front (call it
    while the process runs; lookup() prepares on first use otherwise); the
    FDEs are parsed by the lookups that need them, each once.
    """

    def __init__(self, name: str, data: bytes | mmap.mmap | None, image: ElfImage | None,
                 debug_frame: bytes | None = None, eh_frame: tuple[bytes, int] | None = None):
        """Use the constructors; `data` is the file (or memory image) `image` describes, or None with `eh_frame`."""
        self.name = name
        self.machine = image.ehdr.e_machine if image is not None else None
        self.load_bias: int | None = None   # known for memory images (from_memory)
        self._data = data
        self._image = image
        self._debug_frame_data = debug_frame
        self._eh_frame_data = eh_frame
        self._prepared = False
        self._eh: _Section | None = None
        self._eh_cfi: CallFrameInfo | None = None
        self._debug: _Section | None = None
        self._debug_cfi: CallFrameInfo | None = None
        # .eh_frame_hdr search table as int32 columns relative to hdr_address, or a built index
        self._hdr_locs: memoryview | None = None
        self._hdr_fdes: memoryview | None = None
        self._hdr_address = 0
        self._eh_index: tuple[list[int], list[int], list[int]] | None = None
        self._debug_index: tuple[list[int], list[int], list[int]] | None = None
        self._rows: dict[tuple[bool, int], _Rows] = {}
        self._interned: dict[FrameRule, FrameRule] = {}
        self._cache: dict[int, FrameRule | None] = {}

    # -- construction -----------------------------------------------------
    @classmethod
    def from_path(cls, path: str, debug_path: str | None = None) -> "CallFrameTable":
        """A file's CFI; `debug_path` (found by build-id: elf.symbols.find_debug_file) adds its .debug_frame."""
        try:
            with open(path, "rb") as f:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise ELFFormatError(f"cannot read {path}: {e}") from e
        image = _image_of(data, path)
        debug_frame = _debug_frame_of(debug_path) if debug_path else None
        return cls(path, data, image, debug_frame)

    @classmethod
    def from_memory(cls, read: Callable[[int, int], bytes], map_start: int, size: int | None = None,
                    name: str = "[vdso]") -> "CallFrameTable":
        """An ELF image mapped in memory whole, file offset 0 at map_start (the vdso).

        `read(address, size)` reads the process; `size` is the mapping's length
        (default: what the PT_LOAD segments span in the file).
        """
        image = ElfImage.from_memory_reader(read, map_start)
        if size is None:
            size = max((p.p_offset + p.p_filesz for p in image.phdrs if p.p_type == PT_LOAD), default=0)
        data = read(map_start, size)
        if len(data) != size:
            raise ELFFormatError(f"short read of {name} at {map_start:#x}")
        table = cls(name, data, _image_of(data, name))
        table.load_bias = load_bias(map_start, image.phdrs)
        return table

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>", debug_frame: bytes | None = None) -> "CallFrameTable":
        """An ELF file's bytes."""
        return cls(name, data, _image_of(data, name), debug_frame)

    @classmethod
    def from_eh_frame(cls, data: bytes, address: int, name: str = "<eh_frame>") -> "CallFrameTable":
        """A bare .eh_frame (zero-terminated) whose first byte is at `address`: a patch image's.

        Its FDEs are indexed (there is no .eh_frame_hdr); lookups take the
        addresses the section was linked for, so a load bias of 0 when linked in place.
        """
        return cls(name, None, None, eh_frame=(bytes(data), address))

    # -- preparing --------------------------------------------------------
    def prepare(self) -> "CallFrameTable":
        """Read .eh_frame_hdr and .eh_frame (and index .debug_frame): everything but the FDEs themselves."""
        if self._prepared:
            return self
        try:
            self._prepare()
        except ELFFormatError:
            raise
        except (ELFError, ValueError, KeyError, IndexError, TypeError, AssertionError, struct.error) as e:
            raise ELFFormatError(f"corrupt call frame information in {self.name}: {type(e).__name__}: {e}") from e
        self._prepared = True
        return self

    def _prepare(self) -> None:
        if self._eh_frame_data is not None:
            self._eh = _Section(self._eh_frame_data[0], self._eh_frame_data[1], True)
            self._eh_cfi = _cfi(self._eh)
            self._eh_index = self._index(self._eh, self._eh_cfi)
        if self._image is not None and self._data is not None:
            self._prepare_image(self._data, self._image.phdrs)
        if self._debug_frame_data:
            self._debug = _Section(self._debug_frame_data, 0, False)
            self._debug_cfi = _cfi(self._debug)
            self._debug_index = self._index(self._debug, self._debug_cfi)

    def _prepare_image(self, data: bytes | mmap.mmap, phdrs: list[ProgramHeader]) -> None:
        sections = _section_headers(data)
        hdr = next((p for p in phdrs if p.p_type == PT_GNU_EH_FRAME), None)
        eh_address = None
        if hdr is not None and hdr.p_filesz >= 4:
            hdr_data = bytes(data[hdr.p_offset:hdr.p_offset + hdr.p_filesz])
            eh_address = self._read_hdr(hdr_data, hdr.p_vaddr)
        if eh_address is None and ".eh_frame" in sections:
            eh_address = sections[".eh_frame"][0]
        if eh_address is None:
            return
        section = sections.get(".eh_frame")
        size = section[2] if section is not None and section[0] == eh_address else None
        offset = _vaddr_to_offset(phdrs, eh_address)
        if offset is None:
            raise ELFFormatError(f".eh_frame of {self.name} is not in a loaded segment")
        if size is None:   # no section headers: up to the end of its segment
            seg = next(p for p in phdrs if p.p_type == PT_LOAD and p.p_vaddr <= eh_address < p.p_vaddr + p.p_filesz)
            size = seg.p_vaddr + seg.p_filesz - eh_address
        self._eh = _Section(bytes(data[offset:offset + size]), eh_address, True)
        self._eh_cfi = _cfi(self._eh)
        if self._hdr_locs is None:
            self._eh_index = self._index(self._eh, self._eh_cfi)

    def _read_hdr(self, hdr: bytes, hdr_address: int) -> int | None:
        """The .eh_frame address; the search table kept if it has the usual encoding."""
        version, ptr_enc, count_enc, table_enc = hdr[0], hdr[1], hdr[2], hdr[3]
        if version != 1 or ptr_enc == DW_EH_PE_omit:
            return None
        eh_address, pos = decode_pointer(hdr, 4, ptr_enc, hdr_address, hdr_address)
        if count_enc == DW_EH_PE_omit or table_enc != _TABLE_DATAREL_SDATA4:
            return eh_address   # no table we can search: the FDEs get indexed instead
        count, pos = decode_pointer(hdr, pos, count_enc, hdr_address, hdr_address)
        if pos + 8 * count > len(hdr):
            raise ELFFormatError(f"truncated .eh_frame_hdr table in {self.name}")
        table = memoryview(hdr[pos:pos + 8 * count]).cast("i")
        self._hdr_locs, self._hdr_fdes, self._hdr_address = table[0::2], table[1::2], hdr_address
        return eh_address

    def _index(self, section: _Section, cfi: CallFrameInfo) -> tuple[list[int], list[int], list[int]]:
        """(starts, ends, entry offsets) of every FDE of a section, sorted: one pass over the headers only."""
        data, pos, entries = section.data, 0, []
        fde_encodings: dict[int, int] = {}
        while pos + 4 <= len(data):
            length = _U32.unpack_from(data, pos)[0]
            if length == 0 and section.eh:
                break   # the terminator
            if length == 0xFFFFFFFF:
                length, id_pos, id_size = _U64.unpack_from(data, pos + 4)[0], pos + 12, 8
            else:
                id_pos, id_size = pos + 4, 4
            end = id_pos + length
            cie_id = (_U64 if id_size == 8 else _U32).unpack_from(data, id_pos)[0]
            loc_pos = id_pos + id_size
            if section.eh and cie_id != 0:
                cie_offset = id_pos - cie_id
                if cie_offset not in fde_encodings:
                    cie = cfi._parse_entry_at(cie_offset)
                    if not isinstance(cie, CIE):
                        raise ELFFormatError(f"FDE at {pos:#x} of {self.name} points to no CIE")
                    fde_encodings[cie_offset] = int(cie.augmentation_dict.get("FDE_encoding", DW_EH_PE_absptr))
                encoding = fde_encodings[cie_offset]
                start, after = decode_pointer(data, loc_pos, encoding, section.address, None)
                size, _ = decode_pointer(data, after, encoding & 0x0F, 0, None)
                entries.append((start, start + size, pos))
            elif not section.eh and cie_id not in (_CIE_ID_32 if id_size == 4 else _CIE_ID_64,):
                start, size = struct.unpack_from("<QQ", data, loc_pos)
                entries.append((start, start + size, pos))
            pos = end
        entries.sort()
        return [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]

    # -- lookups ----------------------------------------------------------
    def lookup(self, address: int) -> FrameRule | None:
        """The rule at a link-time address, None if no FDE covers it (ELFFormatError if its CFI is corrupt)."""
        try:
            return self._cache[address]
        except KeyError:
            pass
        if not self._prepared:
            self.prepare()
        try:
            rule = self._find(address)
        except ELFFormatError:
            raise
        except (ELFError, ValueError, KeyError, IndexError, TypeError, AssertionError, struct.error) as e:
            raise ELFFormatError(f"corrupt call frame information in {self.name} at {address:#x}: "
                                 f"{type(e).__name__}: {e}") from e
        self._cache[address] = rule
        return rule

    def _find(self, address: int) -> FrameRule | None:
        rows = None
        if self._eh is not None:
            offset = self._eh_fde_offset(address)
            if offset is not None:
                rows = self._fde_rows(True, offset)
                if rows is not None and not rows.starts[0] <= address < rows.end:
                    rows = None
        if rows is None and self._debug_index is not None:
            starts, ends, offsets = self._debug_index
            i = bisect.bisect_right(starts, address) - 1
            if i >= 0 and address < ends[i]:
                rows = self._fde_rows(False, offsets[i])
        if rows is None:
            return None
        return rows.rules[bisect.bisect_right(rows.starts, address) - 1]

    def _eh_fde_offset(self, address: int) -> int | None:
        assert self._eh is not None
        if self._hdr_locs is not None and self._hdr_fdes is not None:
            relative = address - self._hdr_address
            if not -(1 << 31) <= relative < 1 << 31:
                return None
            i = bisect.bisect_right(self._hdr_locs, relative) - 1
            if i < 0:
                return None
            return self._hdr_address + self._hdr_fdes[i] - self._eh.address
        if self._eh_index is None:
            return None
        starts, ends, offsets = self._eh_index
        i = bisect.bisect_right(starts, address) - 1
        return offsets[i] if i >= 0 and address < ends[i] else None

    def _fde_rows(self, eh: bool, offset: int) -> _Rows | None:
        key = (eh, offset)
        rows = self._rows.get(key)
        if rows is None:
            cfi = self._eh_cfi if eh else self._debug_cfi
            assert cfi is not None
            entry = cfi._parse_entry_at(offset)
            if not isinstance(entry, FDE):
                return None
            rows = _decode_rows(entry, self._interned)
            self._rows[key] = rows
        return rows

    def read_code(self, address: int, size: int) -> bytes:
        """Bytes of the module's file at a link-time address (b"" where nothing is loaded from the file)."""
        if self._image is None or self._data is None:
            return b""
        offset = _vaddr_to_offset(self._image.phdrs, address)
        if offset is None:
            return b""
        seg = next(p for p in self._image.phdrs
                   if p.p_type == PT_LOAD and p.p_vaddr <= address < p.p_vaddr + p.p_filesz)
        size = min(size, seg.p_vaddr + seg.p_filesz - address)
        return bytes(self._data[offset:offset + size])

    def fde_ranges(self) -> list[tuple[int, int]]:
        """Every (start, end) an FDE covers, sorted: for tests and diagnostics (parses every header)."""
        self.prepare()
        out: list[tuple[int, int]] = []
        for section, cfi in ((self._eh, self._eh_cfi), (self._debug, self._debug_cfi)):
            if section is not None and cfi is not None:
                starts, ends, _ = self._index(section, cfi)
                out.extend(zip(starts, ends))
        return sorted(out)


def _image_of(data: bytes | mmap.mmap, name: str) -> ElfImage:
    def read(offset: int, size: int) -> bytes:
        return bytes(data[offset:offset + size])
    ehdr = parse_ehdr(read(0, 64))
    return ElfImage(ehdr, read_phdrs(read, ehdr), None)


def _vaddr_to_offset(phdrs: list[ProgramHeader], address: int) -> int | None:
    for p in phdrs:
        if p.p_type == PT_LOAD and p.p_vaddr <= address < p.p_vaddr + p.p_filesz:
            return address - p.p_vaddr + p.p_offset
    return None


def _section_headers(data: bytes | mmap.mmap) -> dict[str, tuple[int, int, int]]:
    """name: (sh_addr, sh_offset, sh_size) from the section headers, {} when there are none or they lie outside."""
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if not e_shoff or e_shentsize != 64 or not 0 < e_shnum < 65280 or e_shstrndx >= e_shnum \
            or e_shoff + 64 * e_shnum > len(data):
        return {}
    headers = [struct.unpack_from("<IIQQQQ", data, e_shoff + 64 * i) for i in range(e_shnum)]
    _, _, _, _, str_offset, str_size = headers[e_shstrndx]
    names = bytes(data[str_offset:str_offset + str_size])
    out = {}
    for sh_name, _, _, sh_addr, sh_offset, sh_size in headers:
        end = names.find(b"\0", sh_name)
        if 0 <= sh_name < len(names) and end >= 0:
            out[names[sh_name:end].decode("ascii", "replace")] = (sh_addr, sh_offset, sh_size)
    return out


def _debug_frame_of(path: str) -> bytes | None:
    """.debug_frame of a debug file, decompressed (pyelftools handles SHF_COMPRESSED)."""
    try:
        with open(path, "rb") as f:
            section = ELFFile(f).get_section_by_name(".debug_frame")
            return section_data(section, path) if section is not None else None
    except (OSError, ELFError, ValueError, KeyError, IndexError, AssertionError) as e:
        raise ELFFormatError(f"cannot read .debug_frame of {path}: {e}") from e


class _CallFrameInfo(CallFrameInfo):
    """pyelftools' parser, accepting what GAS writes into .debug_frame for .cfi_signal_frame: the
    augmentation "S" without the 'z' (no augmentation data), which pyelftools refuses with an assertion."""

    def _parse_cie_augmentation(self, header, entry_structs):
        augmentation = header.get("augmentation")
        if augmentation and not augmentation.startswith(b"z") and set(augmentation) <= set(b"SBG"):
            return b"", {}
        return super()._parse_cie_augmentation(header, entry_structs)


def _cfi(section: _Section) -> CallFrameInfo:
    return _CallFrameInfo(io.BytesIO(section.data), len(section.data), section.address,
                         DWARFStructs(little_endian=True, dwarf_format=32, address_size=8), for_eh_frame=section.eh)


# -- the rows of one FDE: running its CIE's and its own call frame instructions --------------------------

_ADVANCE_LOC, _OFFSET, _RESTORE = 0x40, 0x80, 0xC0


def _decode_rows(fde: FDE, interned: dict[FrameRule, FrameRule]) -> _Rows:
    cie = fde.cie
    assert cie is not None
    caf, daf = cie["code_alignment_factor"], cie["data_alignment_factor"]
    ra = cie["return_address_register"]
    signal = b"S" in (cie.header.get("augmentation") or b"")
    start = fde["initial_location"]
    end = start + fde["address_range"]

    state = _State()
    _run(cie.instructions, state, None, caf, daf, None)
    initial = dict(state.regs)
    starts: list[int] = [start]
    rules: list[FrameRule] = []

    def emit(next_loc: int) -> None:
        rule = state.rule(ra, signal)
        rules.append(interned.setdefault(rule, rule))
        starts.append(next_loc)

    _run(fde.instructions, state, initial, caf, daf, (start, emit))
    rule = state.rule(ra, signal)
    rules.append(interned.setdefault(rule, rule))
    # Zero-length rows (two advances in a row, or an advance past the end) never match a lookup; drop them.
    kept_starts, kept_rules = [], []
    for i, s in enumerate(starts):
        nxt = starts[i + 1] if i + 1 < len(starts) else end
        if nxt > s and s < end:
            kept_starts.append(s)
            kept_rules.append(rules[i])
    if not kept_starts:
        kept_starts, kept_rules = [start], [rules[-1]]
    return _Rows(kept_starts, kept_rules, end)


class _State:
    __slots__ = ("cfa_register", "cfa_offset", "cfa_expression", "regs", "stack", "loc")

    def __init__(self) -> None:
        self.cfa_register, self.cfa_offset = -1, 0
        self.cfa_expression: bytes | None = None
        self.regs: dict[int, tuple[int, int | bytes]] = {}
        self.stack: list[tuple[int, int, bytes | None, dict[int, tuple[int, int | bytes]]]] = []
        self.loc = 0

    def rule(self, ra: int, signal: bool) -> FrameRule:
        saved = tuple((reg, how, arg) for reg, (how, arg) in sorted(self.regs.items()))
        return FrameRule(self.cfa_register, self.cfa_offset, self.cfa_expression, saved, ra, signal)


def _run(instructions, state: _State, initial: dict[int, tuple[int, int | bytes]] | None, caf: int, daf: int,
         rows: tuple[int, Callable[[int], None]] | None) -> None:
    """Execute call frame instructions (DWARF 5, 6.4.2); `rows` is None for a CIE's initial instructions."""
    if rows is not None:
        state.loc = rows[0]
    for ins in instructions:
        op = int(ins.opcode)
        if op & 0xC0:
            op &= 0xC0   # pyelftools 0.31 keeps the operand in the low bits, 0.33 moves it into args
        args = ins.args
        if op in (_ADVANCE_LOC, 0x02, 0x03, 0x04):          # advance_loc, advance_loc1/2/4
            if rows is None:
                raise ELFFormatError("DW_CFA_advance_loc in a CIE")
            state.loc += args[-1] * caf
            rows[1](state.loc)
        elif op in (_OFFSET, 0x05, 0x11):                   # offset, offset_extended, offset_extended_sf
            state.regs[args[0]] = (OFFSET, args[1] * daf)
        elif op == 0x14 or op == 0x15:                      # val_offset, val_offset_sf
            state.regs[args[0]] = (VAL_OFFSET, args[1] * daf)
        elif op in (_RESTORE, 0x06):                        # restore, restore_extended
            if initial is None:
                raise ELFFormatError("DW_CFA_restore in a CIE")
            if args[0] in initial:
                state.regs[args[0]] = initial[args[0]]
            else:
                state.regs.pop(args[0], None)
        elif op == 0x07:                                    # undefined
            state.regs[args[0]] = (UNDEFINED, 0)
        elif op == 0x08:                                    # same_value
            state.regs[args[0]] = (SAME_VALUE, 0)
        elif op == 0x09:                                    # register
            state.regs[args[0]] = (REGISTER, args[1])
        elif op == 0x0A:                                    # remember_state
            state.stack.append((state.cfa_register, state.cfa_offset, state.cfa_expression, dict(state.regs)))
        elif op == 0x0B:                                    # restore_state (the location stays)
            if not state.stack:
                raise ELFFormatError("DW_CFA_restore_state without remember_state")
            state.cfa_register, state.cfa_offset, state.cfa_expression, state.regs = state.stack.pop()
        elif op == 0x0C:                                    # def_cfa
            state.cfa_register, state.cfa_offset, state.cfa_expression = args[0], args[1], None
        elif op == 0x12:                                    # def_cfa_sf
            state.cfa_register, state.cfa_offset, state.cfa_expression = args[0], args[1] * daf, None
        elif op == 0x0D:                                    # def_cfa_register
            state.cfa_register, state.cfa_expression = args[0], None
        elif op == 0x0E:                                    # def_cfa_offset
            state.cfa_offset = args[0]
        elif op == 0x13:                                    # def_cfa_offset_sf
            state.cfa_offset = args[0] * daf
        elif op == 0x0F:                                    # def_cfa_expression
            state.cfa_register, state.cfa_offset, state.cfa_expression = -1, 0, bytes(args[0])
        elif op == 0x10:                                    # expression
            state.regs[args[0]] = (EXPRESSION, bytes(args[1]))
        elif op == 0x16:                                    # val_expression
            state.regs[args[0]] = (VAL_EXPRESSION, bytes(args[1]))
        elif op in (0x00, 0x2E, 0x2D):
            # nop; GNU_args_size (outgoing arguments: no effect on the CFA rule);
            # AARCH64_negate_ra_state (return addresses are PAC-stripped whatever their state)
            pass
        elif op == 0x01:
            # set_loc: pyelftools reads its operand as an absolute address, which is wrong for
            # .eh_frame's encoded pointers; no compiler emits it
            raise ELFFormatError("DW_CFA_set_loc is not supported")
        else:
            raise ELFFormatError(f"unknown call frame instruction {op:#x}")
