"""AArch64 trampolines and veneers: the bytes are built here, written elsewhere.

Trampolines and veneers jump only through x16 (IP0): the AAPCS64
intra-procedure scratch register, free at a function entry and at a call, and
the only kind of register (with x17) from which an indirect `br` may land on a
`paciasp` entry when BTI is enforced.
"""

import struct
from typing import Callable

from hotpatch.arch.aarch64.insn import (
    ADD_X16_X16,
    ADRP_PAGE,
    ADRP_X16,
    BR_X16,
    BRK_0,
    BTI_C,
    IMM26,
    LANDING_PADS,
    LDR_X16_LIT8,
    LDR_X16_X16,
    PAC_ENTRIES,
    B,
    encode,
    first_word,
    lo12_field,
    page,
    word,
)
from hotpatch.arch.base import Branch
from hotpatch.errors import FieldOverflow, FunctionTooShort, RelocationError

B_MIN, B_MAX = -(1 << 27), (1 << 27) - 4            # ±128 MiB
PAGE_MIN, PAGE_MAX = -(1 << 32), (1 << 32) - 4096   # ±4 GiB, in bytes of page distance
NEAR_SIZE, PAGE_SIZE_FORM, FAR_SIZE, STUB_SIZE = 4, 12, 16, 16
REACH = B_MAX                                       # b
FALLBACK_REACH = (1 << 32) - 4096                   # adrp + add + br


def landing_pad(code: bytes) -> int:
    """4 when the entry is BTI (any kind) or PACIASP/PACIBSP, which the jump goes after."""
    return 4 if first_word(code) in LANDING_PADS else 0


def entry_rewrite(code: bytes) -> bytes:
    """The bytes to write over the landing pad, len == landing_pad(code).

    PACIASP/PACIBSP becomes BTI c: it still accepts indirect calls (BTI c,
    like PACIxSP, is a valid landing pad for BLR and BR x16/x17), and the new
    function signs its own return address, so nothing is signed twice and
    nothing is left signed that the new code does not authenticate. A BTI
    entry is kept as it is; no pad gives b"".
    """
    insn = first_word(code)
    if insn in PAC_ENTRIES:
        return word(BTI_C)
    if insn in LANDING_PADS:
        return bytes(code[:4])
    return b""


def _check_aligned(site: int, destination: int) -> None:
    if site & 3 or destination & 3:
        raise RelocationError(f"branch from {site:#x} to {destination:#x}: AArch64 code is 4-byte aligned")


def in_branch_reach(site: int, destination: int) -> bool:
    _check_aligned(site, destination)
    return B_MIN <= destination - site <= B_MAX


def in_page_reach(site: int, destination: int) -> bool:
    """adrp reaches the destination's page from the site's page."""
    return PAGE_MIN <= page(destination) - page(site) <= PAGE_MAX


def branch(site: int, destination: int, room: int) -> Branch:
    """The shortest jump that reaches and fits in `room` bytes.

    near: b destination (4); page: adrp x16 + add x16 + br x16 (12, ±4 GiB);
    far: ldr x16, #8; br x16; .quad destination (16, anywhere).
    """
    forms: list[tuple[str, int, Callable[[], bytes]]] = []
    if in_branch_reach(site, destination):
        forms.append(("near", NEAR_SIZE, lambda: encode(B, IMM26, destination - site)))
    if in_page_reach(site, destination):
        forms.append(("page", PAGE_SIZE_FORM, lambda: (encode(ADRP_X16, ADRP_PAGE, page(destination) - page(site))
                                                       + encode(ADD_X16_X16, lo12_field(0), destination)
                                                       + word(BR_X16))))
    forms.append(("far", FAR_SIZE, lambda: word(LDR_X16_LIT8) + word(BR_X16) + struct.pack("<Q", destination)))
    for form, size, emit in forms:
        if size <= room:
            return Branch(site, emit(), form)
    raise FunctionTooShort(f"only {room} bytes at {site:#x} for a {forms[0][1]}-byte jump to {destination:#x}")


def stub(stub_addr: int, slot_addr: int) -> bytes:
    """adrp x16, slot; ldr x16, [x16, #lo12]; br x16; brk #0: a veneer through a GOT slot."""
    if stub_addr & 3 or slot_addr & 7:
        raise RelocationError(f"veneer at {stub_addr:#x} or its slot at {slot_addr:#x} is misaligned")
    try:
        adrp = encode(ADRP_X16, ADRP_PAGE, page(slot_addr) - page(stub_addr))
    except FieldOverflow as e:
        raise RelocationError(f"GOT slot at {slot_addr:#x} out of adrp reach of its veneer: {e}") from e
    return adrp + encode(LDR_X16_X16, lo12_field(3), slot_addr) + word(BR_X16) + word(BRK_0)
