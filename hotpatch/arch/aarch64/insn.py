"""AArch64 instruction words and the immediate fields inside them.

Instructions are 32-bit little-endian words; a relocation patches an immediate
field inside the word already there, so each store reads the word, checks the
value fits, and writes the word back. A value that does not fit raises
FieldOverflow (never a silent wrap), which the linker reports or routes
through a veneer. The jump writer encodes with the same stores.
"""

import struct

from hotpatch.arch import reloc as R
from hotpatch.errors import FieldOverflow

# Instruction words (Arm ARM).
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
RET = 0xD65F03C0                # ret (x30)
B = 0x14000000                 # b <imm26>
ADRP_X16 = 0x90000010          # adrp x16, <page>
ADD_X16_X16 = 0x91000210       # add x16, x16, #<imm12>
LDR_X16_X16 = 0xF9400210       # ldr x16, [x16, #<imm12 * 8>]
LDR_X16_LIT8 = 0x58000050      # ldr x16, #8 (the quadword after `br x16`)
BR_X16 = 0xD61F0200

# Entry instructions that must stay where they are: the destination of an
# indirect call lands on them (BTI) or they sign the return address (PAC).
LANDING_PADS = frozenset({BTI, BTI_C, BTI_J, BTI_JC, PACIASP, PACIBSP})
PAC_ENTRIES = frozenset({PACIASP, PACIBSP})
PADDING_WORDS = frozenset({NOP, UDF_0})


def word(value: int) -> bytes:
    return struct.pack("<I", value)


def first_word(code: bytes) -> int | None:
    return struct.unpack_from("<I", code)[0] if len(code) >= 4 else None


def page(address: int) -> int:
    return address & ~0xFFF


def padding_length(code: bytes) -> int:
    """Leading NOP and zero (udf #0) words: alignment padding, never executed."""
    length = 0
    while length + 4 <= len(code) and struct.unpack_from("<I", code, length)[0] in PADDING_WORDS:
        length += 4
    return length


# --- fields inside instruction words ---------------------------------------

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
