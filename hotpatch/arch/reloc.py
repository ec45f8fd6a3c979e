"""Relocation types as data, and the generic bases they are built from.

An architecture's table (arch/<name>/relocations.py) maps ELF r_type numbers
to RelocType values named exactly after the ABI constants, so the table shows
what is covered and what is refused. An out-of-range value is an error, never
a silent wrap: a wrong branch in a live service is a crash.
"""

import struct
from dataclasses import dataclass
from typing import Callable

from hotpatch.errors import FieldOverflow, RelocationError

# value = compute(S, A, P, G): symbol, addend, place, GOT slot of the symbol.
Compute = Callable[[int, int, int, int], int]
# store(buf, offset, value) writes the value into the field, checking its range.
Store = Callable[[bytearray, int, int], None]


@dataclass(frozen=True)
class RelocType:
    name: str
    compute: Compute
    store: Store
    width: int                 # bytes of the field, for bounds checks
    needs_got: bool = False    # the symbol needs a GOT slot in the image
    is_call: bool = False      # out of range: route through a stub/veneer instead of failing
    refusal: str | None = None  # a known type we do not support, and what to do instead
    low: bool = False          # an absolute 32-bit address: the image must lie in the low 2 GiB
    tls_index: bool = False    # the place of a tls_index {module, offset} pair for __tls_get_addr (as G)


def int_field(width: int, signed: bool) -> Store:
    bits = width * 8
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[width]

    def store(buf: bytearray, offset: int, value: int) -> None:
        if not lo <= value <= hi:
            raise FieldOverflow(f"{value:#x} does not fit a {'signed' if signed else 'unsigned'} {bits}-bit field")
        struct.pack_into("<" + fmt, buf, offset, value & ((1 << bits) - 1))
    return store


def truncating_field(width: int) -> Store:
    """For fields defined to wrap (a 64-bit address in a 64-bit field)."""
    fmt = {4: "I", 8: "Q"}[width]
    mask = (1 << (width * 8)) - 1

    def store(buf: bytearray, offset: int, value: int) -> None:
        struct.pack_into("<" + fmt, buf, offset, value & mask)
    return store


# The formulas, in the ABI documents' notation.

def absolute(s: int, a: int, p: int, g: int) -> int:
    """S + A"""
    return s + a


def pc_relative(s: int, a: int, p: int, g: int) -> int:
    """S + A - P"""
    return s + a - p


def got_pc_relative(s: int, a: int, p: int, g: int) -> int:
    """G + GOT + A - P (x86-64 psABI): the slot's address, the addend applied to the place."""
    return g + a - p


def unsupported(name: str, why: str) -> RelocType:
    """A known type we refuse (at layout, before any process is touched), with the reason."""
    def refuse(s: int, a: int, p: int, g: int) -> int:
        raise RelocationError(f"relocation {name} is not supported: {why}")
    return RelocType(name, refuse, int_field(1, False), 1, refusal=why)


def check_field_bounds(rtype: RelocType, section_size: int, offset: int, section: str) -> None:
    if offset < 0 or offset + rtype.width > section_size:
        raise RelocationError(f"{rtype.name} at {section}+{offset:#x} lies outside the section")
