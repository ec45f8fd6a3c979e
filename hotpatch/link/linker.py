"""Lay out a patch object as an image and relocate it for a base address.

Two phases, because the image must be mapped in the target before its final
address is known: `plan_layout` fixes every offset and the total size without
knowing the base; `LayoutPlan.link` then resolves and relocates at a base.

Image layout (each part page-aligned, permissions never W and X together):
    r--  record header, read-only data, .eh_frame (zero-terminated), GOT slots
    r-x  code, call stubs, a trap (the return address of a call hotpatch makes in the process)
    rw-  data, bss, the unwinder's registration object (when there is an .eh_frame)
"""

from dataclasses import dataclass, field
from typing import Callable

from hotpatch.arch.base import Arch
from hotpatch.arch.reloc import check_field_bounds
from hotpatch.elf.relocatable import SHF_EXECINSTR, SHF_TLS, SHF_WRITE, SHT_NOBITS, RelocatableObject, Section
from hotpatch.errors import FieldOverflow, InvalidPatch, RelocationError, SymbolNotFound
from hotpatch.linux import PROT_EXEC, PROT_READ, PROT_WRITE

# Sections a patch may carry but that have no place in the image.
_SKIPPED_TYPES = {7, 17, 0x70000001, 0x6ffffff5, 0x6fff4c03}  # NOTE, GROUP, X86_64_UNWIND, GNU_ATTRIBUTES, LLVM_ADDRSIG
_SKIPPED_NAMES = (".note", ".comment")
# The call frame information is kept (unwinders walk patch frames with it);
# on x86-64 it has type SHT_X86_64_UNWIND, so it is known by name.
EH_FRAME = ".eh_frame"
EH_FRAME_TERMINATOR = 4   # a zero length word ends the list, as crtend.o's does in a linked binary
FRAME_OBJECT_SIZE = 128   # libgcc's struct object (6 to 8 words) with room to spare, zero-filled
_CONSTRUCTOR_TYPES = {14, 15, 16}  # INIT_ARRAY, FINI_ARRAY, PREINIT_ARRAY
_CONSTRUCTOR_NAMES = (".init_array", ".fini_array", ".preinit_array", ".ctors", ".dtors", ".init", ".fini")

Resolver = Callable[[str], int | None]
# A thread-local variable's pair: (module id, offset in its block) for __tls_get_addr, or a descriptor
# (entry, argument); an entry of IMAGE_TLSDESC_ENTRY is the image's own (arch.tlsdesc_return).
TlsResolver = Callable[[str], tuple[int, int]]
IMAGE_TLSDESC_ENTRY = -1
MAX_IMAGE_SIZE = 64 << 20   # a patch is functions, not a program: refuse what would flood the target
GOT_SYMBOL = "_GLOBAL_OFFSET_TABLE_"   # the image's own GOT, never the target's
LOW_LIMIT = 1 << 31   # an image with absolute 32-bit relocations ends below this (R_X86_64_32S: signed)


@dataclass(frozen=True)
class Segment:
    offset: int
    size: int
    prot: int


@dataclass
class LinkedImage:
    base: int
    size: int
    data: bytearray
    segments: list[Segment]
    symbols: dict[str, int]          # global symbols defined by the patch
    code_range: tuple[int, int]      # [start, end) of the r-x part
    eh_frame: tuple[int, int] | None = None   # [start, end) of .eh_frame (terminator included)
    sizes: dict[str, int] = field(default_factory=dict)   # st_size of each global function
    trap: int = 0                     # address of a breakpoint instruction
    frame_object: int | None = None   # address of the registration object, when there is an .eh_frame

    def segment_bytes(self, seg: Segment) -> bytes:
        return bytes(self.data[seg.offset:seg.offset + seg.size])


@dataclass
class LayoutPlan:
    obj: RelocatableObject
    arch: Arch
    page_size: int
    header_size: int
    section_offsets: dict[int, int]
    got_offset: int
    got_keys: list[str | int]                 # slot i holds the address of this symbol key
    stub_offset: int
    stub_keys: list[str]                      # stub i calls this external symbol
    segments: list[Segment]
    size: int
    undefined: list[str] = field(default_factory=list)
    eh_frame: tuple[int, int] | None = None   # offset and size of .eh_frame (terminator included)
    trap_offset: int = 0
    frame_object_offset: int | None = None
    low: bool = False   # absolute 32-bit relocations: the image must lie below LOW_LIMIT
    tls_offset: int = 0
    tls_keys: list[str] = field(default_factory=list)   # pair i: the tls_index (descriptor) of this variable
    tlsdesc_offset: int = 0                              # the image's static TLS descriptor entry

    def link(self, base: int, resolve: Resolver, resolve_tls: TlsResolver | None = None) -> LinkedImage:
        return _link(self, base, resolve, resolve_tls)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def _classify(sec: Section) -> str | None:
    if sec.alloc and sec.name == EH_FRAME:
        return "eh_frame"
    if not sec.alloc or sec.sh_type in _SKIPPED_TYPES or sec.name.startswith(_SKIPPED_NAMES):
        return None
    if sec.sh_flags & SHF_TLS:
        raise InvalidPatch(f"section {sec.name} holds thread-local data, which a patch cannot add",
                           "use a global or static variable")
    if sec.sh_type in _CONSTRUCTOR_TYPES or sec.name.startswith(_CONSTRUCTOR_NAMES):
        raise InvalidPatch(f"section {sec.name}: constructors and destructors cannot run in a patch",
                           "initialise new data statically")
    if sec.sh_flags & SHF_EXECINSTR:
        return "text"
    if sec.sh_flags & SHF_WRITE:
        return "bss" if sec.sh_type == SHT_NOBITS else "data"
    return "rodata"


def _symbol_key(obj: RelocatableObject, index: int) -> str | int:
    sym = obj.symbols[index]
    if sym.shndx == "UND" or (sym.bind != "local" and sym.name):
        return sym.name
    return index


def plan_layout(obj: RelocatableObject, arch: Arch, header_size: int, page_size: int = 4096) -> LayoutPlan:
    groups: dict[str, list[Section]] = {"rodata": [], "eh_frame": [], "text": [], "data": [], "bss": []}
    for sec in obj.sections.values():
        kind = _classify(sec)
        if kind:
            groups[kind].append(sec)
    for sym in obj.symbols:
        if sym.shndx == "COMMON":
            raise InvalidPatch(f"symbol {sym.name} is a common symbol", "compile the patch with -fno-common")

    # dicts as ordered sets: membership tests stay O(1) with many symbols
    got_keys: dict[str | int, None] = {}
    stub_keys: dict[str, None] = {}
    undefined: dict[str, None] = {}
    tls_keys: dict[str, None] = {}
    low = False
    for target, relocs in obj.relocations.items():
        if _classify(obj.sections[target]) is None:
            continue
        for r in relocs:
            rtype = arch.relocations.get(r.r_type)
            if rtype is None:
                raise RelocationError(
                    f"unsupported relocation type {r.r_type} in {obj.sections[target].name}")
            if rtype.refusal:
                raise RelocationError(f"relocation {rtype.name} in {obj.sections[target].name} is not "
                                      f"supported: {rtype.refusal}")
            sym = obj.symbols[r.r_sym]
            key = _symbol_key(obj, r.r_sym)
            low = low or rtype.low
            if rtype.tls_index:
                if sym.shndx != "UND":
                    raise RelocationError(f"{sym.name or 'a variable'} is a thread-local variable of the patch "
                                          "itself, which cannot be added", "make it a global or a static")
                tls_keys[sym.name] = None
                continue
            if rtype.needs_got:
                got_keys[key] = None
            if rtype.is_call and sym.shndx == "UND":
                stub_keys[sym.name] = None
            if sym.shndx == "UND" and sym.name and sym.name != GOT_SYMBOL:
                undefined[sym.name] = None
    for name in stub_keys:
        got_keys[name] = None

    offsets: dict[int, int] = {}
    pos = header_size

    def place(sections: list[Section]) -> None:
        nonlocal pos
        for sec in sorted(sections, key=lambda s: s.index):
            pos = _align(pos, sec.sh_addralign)
            offsets[sec.index] = pos
            pos += sec.sh_size

    segments = []
    start = 0
    place(groups["rodata"])
    eh_frame = None
    if groups["eh_frame"]:
        pos = _align(pos, 8)
        eh_start = pos
        place(groups["eh_frame"])
        pos += EH_FRAME_TERMINATOR   # the image is zero-filled
        eh_frame = (eh_start, pos - eh_start)
    got_offset = _align(pos, 8)
    pos = got_offset + 8 * len(got_keys)
    tls_offset = _align(pos, 16)
    pos = tls_offset + 16 * len(tls_keys)
    segments.append(Segment(start, _align(pos, page_size) - start, PROT_READ))
    start = pos = _align(pos, page_size)
    place(groups["text"])
    stub_offset = _align(pos, 16)
    pos = stub_offset + arch.stub_size * len(stub_keys)
    trap_offset = _align(pos, 4)
    pos = trap_offset + len(arch.return_loop)
    tlsdesc_offset = _align(pos, 4)
    if tls_keys:
        pos = tlsdesc_offset + len(arch.tlsdesc_return)
    if pos > start:
        segments.append(Segment(start, _align(pos, page_size) - start, PROT_READ | PROT_EXEC))
    start = pos = _align(pos, page_size)
    place(groups["data"])
    place(groups["bss"])
    frame_object_offset = None
    if eh_frame:
        frame_object_offset = _align(pos, 16)
        pos = frame_object_offset + FRAME_OBJECT_SIZE
    if pos > start:
        segments.append(Segment(start, _align(pos, page_size) - start, PROT_READ | PROT_WRITE))
    size = _align(pos, page_size)
    if size > MAX_IMAGE_SIZE:
        raise InvalidPatch(f"the patch image would take {size >> 20} MiB; at most {MAX_IMAGE_SIZE >> 20} MiB "
                           "is allowed", "a patch holds replacement functions, not a program")
    return LayoutPlan(obj, arch, page_size, header_size, offsets, got_offset, list(got_keys),
                      stub_offset, list(stub_keys), segments, size, list(undefined), eh_frame,
                      trap_offset, frame_object_offset, low, tls_offset, list(tls_keys), tlsdesc_offset)


def _link(plan: LayoutPlan, base: int, resolve: Resolver, resolve_tls: TlsResolver | None) -> LinkedImage:
    obj, arch = plan.obj, plan.arch
    image = bytearray(plan.size)
    image[plan.trap_offset:plan.trap_offset + len(arch.return_loop)] = arch.return_loop
    if plan.tls_keys:
        image[plan.tlsdesc_offset:plan.tlsdesc_offset + len(arch.tlsdesc_return)] = arch.tlsdesc_return
    for index, offset in plan.section_offsets.items():
        sec = obj.sections[index]
        image[offset:offset + len(sec.data)] = sec.data

    resolved: dict[str, int] = {}

    def symbol_address(index: int) -> int:
        address = _symbol_address(index)
        if not 0 <= address < 1 << 64:
            raise RelocationError(f"symbol {obj.symbols[index].name or index} resolves outside the "
                                  "address space")
        return address

    def _symbol_address(index: int) -> int:
        sym = obj.symbols[index]
        if isinstance(sym.shndx, int):
            if sym.shndx not in plan.section_offsets:
                raise RelocationError(
                    f"symbol {sym.name or index} lies in section {obj.sections[sym.shndx].name}, "
                    "which is not part of the image")
            return base + plan.section_offsets[sym.shndx] + sym.value
        if sym.shndx == "ABS":
            return sym.value
        if sym.name == GOT_SYMBOL:
            return base + plan.got_offset
        if sym.name not in resolved:
            address = resolve(sym.name)
            if address is None:
                if sym.bind != "weak":
                    raise SymbolNotFound(
                        f"undefined symbol {sym.name}: not in the target binary nor in any library "
                        "the process has loaded",
                        "declare only symbols the target or its libraries define")
                address = 0
            resolved[sym.name] = address
        return resolved[sym.name]

    key_index: dict[str | int, int] = {}
    for i, sym in enumerate(obj.symbols):
        key_index.setdefault(_symbol_key(obj, i), i)
    got = {}
    for slot, key in enumerate(plan.got_keys):
        address = symbol_address(key if isinstance(key, int) else key_index[key])
        got[key] = base + plan.got_offset + 8 * slot
        image[plan.got_offset + 8 * slot:plan.got_offset + 8 * slot + 8] = address.to_bytes(8, "little")
    pairs = {}
    for i, name in enumerate(plan.tls_keys):
        if resolve_tls is None:
            raise SymbolNotFound(f"{name} is a thread-local variable: it binds only in a process")
        first, second = resolve_tls(name)
        if first == IMAGE_TLSDESC_ENTRY:
            first = base + plan.tlsdesc_offset
        at = plan.tls_offset + 16 * i
        image[at:at + 16] = first.to_bytes(8, "little") + (second & (1 << 64) - 1).to_bytes(8, "little")
        pairs[name] = base + at
    stubs = {}
    for i, name in enumerate(plan.stub_keys):
        stub_off = plan.stub_offset + arch.stub_size * i
        stubs[name] = base + stub_off
        image[stub_off:stub_off + arch.stub_size] = arch.stub(base + stub_off, got[name])

    for target, relocs in obj.relocations.items():
        if target not in plan.section_offsets:
            continue
        sec = obj.sections[target]
        sec_off = plan.section_offsets[target]
        if sec.sh_type == SHT_NOBITS and relocs:
            raise RelocationError(f"relocations against {sec.name}, which has no contents")
        for r in relocs:
            rtype = arch.relocations[r.r_type]
            check_field_bounds(rtype, sec.sh_size, r.r_offset, sec.name)
            sym = obj.symbols[r.r_sym]
            key = _symbol_key(obj, r.r_sym)
            place = base + sec_off + r.r_offset
            if rtype.tls_index:
                s, g = 0, pairs[sym.name]
            else:
                s, g = symbol_address(r.r_sym), got.get(key, 0)
            try:
                rtype.store(image, sec_off + r.r_offset, rtype.compute(s, r.r_addend, place, g))
            except FieldOverflow as e:
                if rtype.is_call and sym.name in stubs:
                    try:
                        rtype.store(image, sec_off + r.r_offset,
                                    rtype.compute(stubs[sym.name], r.r_addend, place, g))
                        continue
                    except FieldOverflow:
                        pass
                raise RelocationError(
                    f"relocation overflow: {rtype.name} at {sec.name}+{r.r_offset:#x} "
                    f"to {sym.name or _section_name(obj, sym.shndx, sec.name)}: {e}",
                    "the patch image could not be placed near enough to the target") from e

    symbols, sizes = {}, {}
    for sym in obj.symbols:
        if sym.bind != "local" and sym.name and isinstance(sym.shndx, int) \
                and sym.shndx in plan.section_offsets:
            symbols[sym.name] = base + plan.section_offsets[sym.shndx] + sym.value
            sizes[sym.name] = sym.size
    code = [s for s in plan.segments if s.prot & PROT_EXEC]
    code_range = (base + code[0].offset, base + code[0].offset + code[0].size) if code else (base, base)
    eh_frame = (base + plan.eh_frame[0], base + sum(plan.eh_frame)) if plan.eh_frame else None
    frame_object = base + plan.frame_object_offset if plan.frame_object_offset is not None else None
    return LinkedImage(base, plan.size, image, plan.segments, symbols, code_range, eh_frame, sizes,
                       base + plan.trap_offset, frame_object)


def _section_name(obj: RelocatableObject, shndx: int | str, default: str) -> str:
    section = obj.sections.get(shndx) if isinstance(shndx, int) else None
    return section.name if section else default
