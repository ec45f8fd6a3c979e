"""AArch64: user_pt_regs, the syscall ABI, branch encodings, ELF relocations.

Pure: nothing here looks at the host, so every encoding is tested on any machine.
Instructions are 32-bit little-endian words; a relocation patches an immediate
field inside the word already there, so each store below reads the word, checks
the value fits, and writes the word back. A value that does not fit raises
FieldOverflow (never a silent wrap), which the linker reports or routes through
a veneer.

Trampolines and veneers jump only through x16 (IP0): the AAPCS64 intra-procedure
scratch register, free at a function entry and at a call, and the only kind of
register (with x17) from which an indirect `br` may land on a `paciasp` entry
when BTI is enforced.
"""

import ctypes
import struct
from typing import Callable

from hotpatch.arch.base import Arch, Branch
from hotpatch.errors import FunctionTooShort, RelocationError
from hotpatch.link import reloc as R

U64 = (1 << 64) - 1

# Instruction words (Arm ARM, little-endian on disk and in memory).
BTI = 0xD503241F
BTI_C = 0xD503245F
BTI_J = 0xD503249F
BTI_JC = 0xD50324DF
PACIASP = 0xD503233F
PACIBSP = 0xD503237F
NOP = 0xD503201F
UDF_0 = 0x00000000
BRK_0 = 0xD4200000
SVC_0 = 0xD4000001
B = 0x14000000                 # b <imm26>
ADRP_X16 = 0x90000010          # adrp x16, <page>
ADD_X16_X16 = 0x91000210       # add x16, x16, #<imm12>
LDR_X16_X16 = 0xF9400210       # ldr x16, [x16, #<imm12 * 8>]
LDR_X16_LIT8 = 0x58000050      # ldr x16, #8 (the quadword after `br x16`)
BR_X16 = 0xD61F0200

# Entry instructions that must stay where they are: the target of an indirect
# call lands on them (BTI) or they sign the return address (PAC).
LANDING_PADS = frozenset({BTI, BTI_C, BTI_J, BTI_JC, PACIASP, PACIBSP})
PAC_ENTRIES = frozenset({PACIASP, PACIBSP})
PADDING_WORDS = frozenset({NOP, UDF_0})

B_MIN, B_MAX = -(1 << 27), (1 << 27) - 4            # ±128 MiB
PAGE_MIN, PAGE_MAX = -(1 << 32), (1 << 32) - 4096   # ±4 GiB, in bytes of page distance


class user_pt_regs(ctypes.Structure):
    """NT_PRSTATUS on aarch64 (arch/arm64/include/uapi/asm/ptrace.h)."""
    _fields_ = [("regs", ctypes.c_ulonglong * 31), ("sp", ctypes.c_ulonglong),
                ("pc", ctypes.c_ulonglong), ("pstate", ctypes.c_ulonglong)]


def word(value: int) -> bytes:
    return struct.pack("<I", value)


def first_word(code: bytes) -> int | None:
    return struct.unpack_from("<I", code)[0] if len(code) >= 4 else None


def strip_pac(value: int, va_bits: int = 48) -> int:
    """The address in a code pointer that may carry a pointer authentication code.

    The PAC occupies the bits above the virtual address (va_bits..54 and 56..63:
    Linux enables top-byte-ignore for data only, so instruction pointers use the
    top byte too); bit 55 says which half of the address space the pointer is in
    and is never part of the code. Assumption: a user-space pointer has bit 55
    clear and all bits from va_bits up clear, so stripping clears them (as XPACI
    does); a pointer with bit 55 set gets them set. va_bits = 48 is the Linux
    user default; a process that asked mmap for addresses above 2**48 (52-bit VA)
    needs va_bits = 52, or better the mask from the NT_ARM_PAC_MASK regset.
    """
    low = (1 << va_bits) - 1
    return (value | (U64 & ~low)) if value >> 55 & 1 else value & low


# --- fields inside instruction words ---------------------------------------

FieldOverflow = R.FieldOverflow


def _check_signed(value: int, bits: int, what: str) -> None:
    if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
        raise FieldOverflow(f"{value:#x} does not fit the signed {bits}-bit {what}")


def _patch(buf: bytearray, offset: int, mask: int, bits: int) -> None:
    insn = struct.unpack_from("<I", buf, offset)[0]
    struct.pack_into("<I", buf, offset, (insn & ~mask & 0xFFFFFFFF) | (bits & mask))


def branch_field(bits: int) -> R.Store:
    """Word offset of B/BL (imm26 at bit 0), B.cond/CBZ/LDR literal (imm19 at 5), TBZ (imm14 at 5)."""
    lsb = 0 if bits == 26 else 5
    mask = ((1 << bits) - 1) << lsb

    def store(buf: bytearray, offset: int, value: int) -> None:
        if value & 3:
            raise FieldOverflow(f"{value:#x} is not a multiple of 4: no instruction lies there")
        _check_signed(value >> 2, bits, "word offset")
        _patch(buf, offset, mask, (value >> 2) << lsb)
    return store


def adr_field(in_pages: bool) -> R.Store:
    """ADRP (a page distance in bytes) or ADR (a byte distance): 21 bits as immlo:immhi."""
    mask = (3 << 29) | (0x7FFFF << 5)

    def store(buf: bytearray, offset: int, value: int) -> None:
        if in_pages and value & 0xFFF:
            raise FieldOverflow(f"{value:#x} is not a whole number of pages")
        imm = value >> 12 if in_pages else value
        _check_signed(imm, 21, "page offset" if in_pages else "byte offset")
        _patch(buf, offset, mask, ((imm & 3) << 29) | (((imm >> 2) & 0x7FFFF) << 5))
    return store


def lo12_field(shift: int) -> R.Store:
    """Low 12 bits of an address into ADD (shift 0) or a scaled LDR/STR (shift = log2 size)."""
    mask = 0xFFF << 10

    def store(buf: bytearray, offset: int, value: int) -> None:
        lo12 = value & 0xFFF
        if lo12 & ((1 << shift) - 1):
            raise FieldOverflow(f"{value:#x} is not aligned to the {1 << shift}-byte access")
        _patch(buf, offset, mask, (lo12 >> shift) << 10)
    return store


def encode(opcode: int, store: R.Store, value: int) -> bytes:
    """One instruction with its immediate filled in, by the same code that relocates."""
    buf = bytearray(word(opcode))
    store(buf, 0, value)
    return bytes(buf)


IMM26, IMM19, IMM14 = branch_field(26), branch_field(19), branch_field(14)
ADRP_PAGE, ADR_BYTE = adr_field(True), adr_field(False)


# --- what each relocation computes ------------------------------------------

def page(address: int) -> int:
    return address & ~0xFFF


def page_relative(s: int, a: int, p: int, g: int) -> int:
    return page(s + a) - page(p)


def _no_got_addend(a: int) -> None:
    if a:
        # G(GDAT(S+A)) needs a slot holding S+A; the image has one slot per symbol.
        raise RelocationError(f"GOT relocation with addend {a}: only a symbol's own address has a slot")


def got_page_relative(s: int, a: int, p: int, g: int) -> int:
    _no_got_addend(a)
    return page(g) - page(p)


def got_absolute(s: int, a: int, p: int, g: int) -> int:
    _no_got_addend(a)
    return g


def got_pc_relative(s: int, a: int, p: int, g: int) -> int:
    _no_got_addend(a)
    return g - p


def _reloc(name: str, compute: R.Compute, store: R.Store, width: int = 4, **flags) -> R.RelocType:
    return R.RelocType(name, compute, store, width, **flags)


TLS_WHY = "thread-local variables in a patch are not supported; use a global or a static variable"
PIC_WHY = "absolute 32/16-bit address: build the patch with -fPIC (hotpatch build does)"
LARGE_WHY = "large code model: build without -mcmodel=large"
SMALL_PIC_WHY = "small GOT model (-fpic): build the patch with -fPIC"

# AArch64 ELF ABI (AAELF64) numbers, 512..573 in order: every TLS model is refused.
_TLS_NAMES = (
    "TLSGD_ADR_PREL21", "TLSGD_ADR_PAGE21", "TLSGD_ADD_LO12_NC", "TLSGD_MOVW_G1", "TLSGD_MOVW_G0_NC",
    "TLSLD_ADR_PREL21", "TLSLD_ADR_PAGE21", "TLSLD_ADD_LO12_NC", "TLSLD_MOVW_G1", "TLSLD_MOVW_G0_NC",
    "TLSLD_LD_PREL19", "TLSLD_MOVW_DTPREL_G2", "TLSLD_MOVW_DTPREL_G1", "TLSLD_MOVW_DTPREL_G1_NC",
    "TLSLD_MOVW_DTPREL_G0", "TLSLD_MOVW_DTPREL_G0_NC", "TLSLD_ADD_DTPREL_HI12", "TLSLD_ADD_DTPREL_LO12",
    "TLSLD_ADD_DTPREL_LO12_NC", "TLSLD_LDST8_DTPREL_LO12", "TLSLD_LDST8_DTPREL_LO12_NC",
    "TLSLD_LDST16_DTPREL_LO12", "TLSLD_LDST16_DTPREL_LO12_NC", "TLSLD_LDST32_DTPREL_LO12",
    "TLSLD_LDST32_DTPREL_LO12_NC", "TLSLD_LDST64_DTPREL_LO12", "TLSLD_LDST64_DTPREL_LO12_NC",
    "TLSIE_MOVW_GOTTPREL_G1", "TLSIE_MOVW_GOTTPREL_G0_NC", "TLSIE_ADR_GOTTPREL_PAGE21",
    "TLSIE_LD64_GOTTPREL_LO12_NC", "TLSIE_LD_GOTTPREL_PREL19", "TLSLE_MOVW_TPREL_G2",
    "TLSLE_MOVW_TPREL_G1", "TLSLE_MOVW_TPREL_G1_NC", "TLSLE_MOVW_TPREL_G0", "TLSLE_MOVW_TPREL_G0_NC",
    "TLSLE_ADD_TPREL_HI12", "TLSLE_ADD_TPREL_LO12", "TLSLE_ADD_TPREL_LO12_NC",
    "TLSLE_LDST8_TPREL_LO12", "TLSLE_LDST8_TPREL_LO12_NC", "TLSLE_LDST16_TPREL_LO12",
    "TLSLE_LDST16_TPREL_LO12_NC", "TLSLE_LDST32_TPREL_LO12", "TLSLE_LDST32_TPREL_LO12_NC",
    "TLSLE_LDST64_TPREL_LO12", "TLSLE_LDST64_TPREL_LO12_NC", "TLSDESC_LD_PREL19", "TLSDESC_ADR_PREL21",
    "TLSDESC_ADR_PAGE21", "TLSDESC_LD64_LO12", "TLSDESC_ADD_LO12", "TLSDESC_OFF_G1",
    "TLSDESC_OFF_G0_NC", "TLSDESC_LDR", "TLSDESC_ADD", "TLSDESC_CALL", "TLSLE_LDST128_TPREL_LO12",
    "TLSLE_LDST128_TPREL_LO12_NC", "TLSLD_LDST128_DTPREL_LO12", "TLSLD_LDST128_DTPREL_LO12_NC",
)
_MOVW_NAMES = {
    263: "MOVW_UABS_G0", 264: "MOVW_UABS_G0_NC", 265: "MOVW_UABS_G1", 266: "MOVW_UABS_G1_NC",
    267: "MOVW_UABS_G2", 268: "MOVW_UABS_G2_NC", 269: "MOVW_UABS_G3", 270: "MOVW_SABS_G0",
    271: "MOVW_SABS_G1", 272: "MOVW_SABS_G2", 287: "MOVW_PREL_G0", 288: "MOVW_PREL_G0_NC",
    289: "MOVW_PREL_G1", 290: "MOVW_PREL_G1_NC", 291: "MOVW_PREL_G2", 292: "MOVW_PREL_G2_NC",
    293: "MOVW_PREL_G3", 300: "MOVW_GOTOFF_G0", 301: "MOVW_GOTOFF_G0_NC", 302: "MOVW_GOTOFF_G1",
    303: "MOVW_GOTOFF_G1_NC", 304: "MOVW_GOTOFF_G2", 305: "MOVW_GOTOFF_G2_NC", 306: "MOVW_GOTOFF_G3",
    307: "GOTREL64", 308: "GOTREL32",
}

RELOCATIONS: dict[int, R.RelocType] = {
    # data
    257: _reloc("R_AARCH64_ABS64", R.absolute, R.truncating_field(8), 8),
    258: R.unsupported("R_AARCH64_ABS32", PIC_WHY),
    259: R.unsupported("R_AARCH64_ABS16", PIC_WHY),
    260: _reloc("R_AARCH64_PREL64", R.pc_relative, R.int_field(8, True), 8),
    261: _reloc("R_AARCH64_PREL32", R.pc_relative, R.int_field(4, True), 4),
    262: _reloc("R_AARCH64_PREL16", R.pc_relative, R.int_field(2, True), 2),
    # addresses: adrp + add/ldr/str, adr, ldr literal
    273: _reloc("R_AARCH64_LD_PREL_LO19", R.pc_relative, IMM19),
    274: _reloc("R_AARCH64_ADR_PREL_LO21", R.pc_relative, ADR_BYTE),
    275: _reloc("R_AARCH64_ADR_PREL_PG_HI21", page_relative, ADRP_PAGE),
    276: _reloc("R_AARCH64_ADR_PREL_PG_HI21_NC", page_relative, ADRP_PAGE),   # checked anyway
    277: _reloc("R_AARCH64_ADD_ABS_LO12_NC", R.absolute, lo12_field(0)),
    278: _reloc("R_AARCH64_LDST8_ABS_LO12_NC", R.absolute, lo12_field(0)),
    284: _reloc("R_AARCH64_LDST16_ABS_LO12_NC", R.absolute, lo12_field(1)),
    285: _reloc("R_AARCH64_LDST32_ABS_LO12_NC", R.absolute, lo12_field(2)),
    286: _reloc("R_AARCH64_LDST64_ABS_LO12_NC", R.absolute, lo12_field(3)),
    299: _reloc("R_AARCH64_LDST128_ABS_LO12_NC", R.absolute, lo12_field(4)),
    # branches: b/bl reach ±128 MiB, else the linker routes calls through a veneer (stub)
    279: _reloc("R_AARCH64_TSTBR14", R.pc_relative, IMM14),
    280: _reloc("R_AARCH64_CONDBR19", R.pc_relative, IMM19),
    282: _reloc("R_AARCH64_JUMP26", R.pc_relative, IMM26, is_call=True),
    283: _reloc("R_AARCH64_CALL26", R.pc_relative, IMM26, is_call=True),
    # GOT slots in the image
    309: _reloc("R_AARCH64_GOT_LD_PREL19", got_pc_relative, IMM19, needs_got=True),
    310: R.unsupported("R_AARCH64_LD64_GOTOFF_LO15", SMALL_PIC_WHY),
    311: _reloc("R_AARCH64_ADR_GOT_PAGE", got_page_relative, ADRP_PAGE, needs_got=True),
    312: _reloc("R_AARCH64_LD64_GOT_LO12_NC", got_absolute, lo12_field(3), needs_got=True),
    313: R.unsupported("R_AARCH64_LD64_GOTPAGE_LO15", SMALL_PIC_WHY),
    **{n: R.unsupported("R_AARCH64_" + name, LARGE_WHY) for n, name in _MOVW_NAMES.items()},
    **{512 + i: R.unsupported("R_AARCH64_" + name, TLS_WHY) for i, name in enumerate(_TLS_NAMES)},
}


class AArch64(Arch):
    name = "aarch64"
    e_machine = 183
    regs_type = user_pt_regs
    syscall_insn = word(SVC_0)
    syscall_insn_align = 4
    syscall_numbers = {"mmap": 222, "mprotect": 226, "munmap": 215, "prctl": 167}
    relocations = RELOCATIONS
    got_reloc_types = {1025, 1026}   # R_AARCH64_GLOB_DAT, R_AARCH64_JUMP_SLOT
    stub_size = 16
    branch_reach = (1 << 27) - 4         # b: ±128 MiB
    fallback_reach = (1 << 32) - 4096    # adrp+add+br: ±4 GiB
    near_branch_size = 4
    far_branch_size = 16

    # registers
    def pc(self, regs) -> int:
        return regs.pc

    def sp(self, regs) -> int:
        return regs.sp

    def code_pointers(self, regs) -> list[int]:
        """LR (x30): the return address of a leaf function lives only there, maybe PAC-signed."""
        return [strip_pac(regs.regs[30])]

    def hijack_for_syscall(self, regs, gadget: int, nr: int, args: list[int]):
        # Before a ptrace stop the kernel already rewound pc to the svc and
        # restored x0 of an interrupted syscall, so moving pc needs no
        # orig_rax-style fix-up (RESEARCH §2).
        new = user_pt_regs.from_buffer_copy(regs)
        new.pc = gadget
        new.regs[8] = nr
        for i, value in enumerate(args[:6]):
            new.regs[i] = value & U64
        return new

    def syscall_result(self, regs) -> int:
        value = regs.regs[0]
        return value - (1 << 64) if value >= 1 << 63 else value

    # code
    def landing_pad(self, code: bytes) -> int:
        """4 when the entry is BTI (any kind) or PACIASP/PACIBSP, which the jump goes after."""
        return 4 if first_word(code) in LANDING_PADS else 0

    def entry_rewrite(self, code: bytes) -> bytes:
        """The bytes to write over the landing pad, len == landing_pad(code).

        PACIASP/PACIBSP becomes BTI c: it still accepts indirect calls (BTI c,
        like PACIxSP, is a valid landing pad for BLR and BR x16/x17), and the
        new function signs its own return address, so nothing is signed twice
        and nothing is left signed that the new code does not authenticate. A
        BTI entry is kept as it is; no pad gives b"".
        """
        insn = first_word(code)
        if insn in PAC_ENTRIES:
            return word(BTI_C)
        if insn in LANDING_PADS:
            return bytes(code[:4])
        return b""

    def padding_length(self, code: bytes) -> int:
        """Leading NOP and zero (udf #0) words: alignment padding, never executed."""
        length = 0
        while length + 4 <= len(code) and struct.unpack_from("<I", code, length)[0] in PADDING_WORDS:
            length += 4
        return length

    def in_branch_reach(self, site: int, target: int) -> bool:
        _check_aligned(site, target)
        return B_MIN <= target - site <= B_MAX

    def in_page_reach(self, site: int, target: int) -> bool:
        """adrp reaches the target's page from the site's page."""
        return PAGE_MIN <= page(target) - page(site) <= PAGE_MAX

    def branch(self, site: int, target: int, room: int) -> Branch:
        """The shortest jump that reaches and fits in `room` bytes.

        near: b target (4); page: adrp x16 + add x16 + br x16 (12, ±4 GiB);
        far: ldr x16, #8; br x16; .quad target (16, anywhere).
        """
        forms: list[tuple[str, int, Callable[[], bytes]]] = []
        if self.in_branch_reach(site, target):
            forms.append(("near", 4, lambda: encode(B, IMM26, target - site)))
        if self.in_page_reach(site, target):
            forms.append(("page", 12, lambda: (encode(ADRP_X16, ADRP_PAGE, page(target) - page(site))
                                               + encode(ADD_X16_X16, lo12_field(0), target)
                                               + word(BR_X16))))
        forms.append(("far", 16, lambda: word(LDR_X16_LIT8) + word(BR_X16) + struct.pack("<Q", target)))
        for form, size, emit in forms:
            if size <= room:
                return Branch(site, emit(), form)
        raise FunctionTooShort(
            f"only {room} bytes at {site:#x} for a {forms[0][1]}-byte jump to {target:#x}")

    def stub(self, stub_addr: int, slot_addr: int) -> bytes:
        """adrp x16, slot; ldr x16, [x16, #lo12]; br x16; brk #0: a veneer through a GOT slot."""
        if stub_addr & 3 or slot_addr & 7:
            raise ValueError(f"veneer at {stub_addr:#x} or its slot at {slot_addr:#x} is misaligned")
        try:
            adrp = encode(ADRP_X16, ADRP_PAGE, page(slot_addr) - page(stub_addr))
        except FieldOverflow as e:
            raise ValueError(f"GOT slot at {slot_addr:#x} out of adrp reach of its veneer: {e}") from e
        return adrp + encode(LDR_X16_X16, lo12_field(3), slot_addr) + word(BR_X16) + word(BRK_0)


def _check_aligned(site: int, target: int) -> None:
    if site & 3 or target & 3:
        raise ValueError(f"branch from {site:#x} to {target:#x}: AArch64 code is 4-byte aligned")
