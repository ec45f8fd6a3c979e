"""x86-64 trampolines and call stubs: the bytes are built here, written elsewhere.

Every function takes the address the bytes will run at (site, stub_addr)
apart from any buffer: the caller writes them into the process.
"""

import struct

from hotpatch.arch.base import Branch
from hotpatch.arch.x86_64.insn import ENDBR64, JMP_REL32, JMP_RIP_INDIRECT, JMP_RIP_SLOT, UD2
from hotpatch.errors import FunctionTooShort, RelocationError

NEAR_SIZE, FAR_SIZE, STUB_SIZE = 5, 14, 8
HOP_SIZE, SHORT_SIZE, JMP_REL8 = 5, 2, 0xEB
REACH = (1 << 31) - 1


def rel32_reaches(site_end: int, destination: int) -> bool:
    return -(1 << 31) <= destination - site_end < (1 << 31)


def landing_pad(code: bytes) -> int:
    return len(ENDBR64) if code.startswith(ENDBR64) else 0


def entry_rewrite(code: bytes) -> bytes:
    """endbr64 stays as it is."""
    return bytes(code[:landing_pad(code)])


def in_branch_reach(site: int, destination: int) -> bool:
    return rel32_reaches(site + NEAR_SIZE, destination)


def branch(site: int, destination: int, room: int) -> Branch:
    """jmp rel32 when it reaches, else jmp *0(%rip) with the address inline."""
    near = in_branch_reach(site, destination)
    if near and room >= NEAR_SIZE:
        return Branch(site, struct.pack("<Bi", JMP_REL32, destination - (site + NEAR_SIZE)), "near")
    if room >= FAR_SIZE:
        return Branch(site, JMP_RIP_INDIRECT + struct.pack("<Q", destination), "far")
    need = NEAR_SIZE if near else FAR_SIZE
    raise FunctionTooShort(f"only {room} bytes at {site:#x} for a {need}-byte jump to {destination:#x}")


def hop_branch(entry: int, pad: bytes, destination: int) -> Branch:
    """For a function too short for a jmp rel32 (a 6-byte `endbr64; jmp x`): the jmp rel32 in the 5 bytes
    of alignment padding before its entry, and after its landing pad a 2-byte jmp rel8 back to it, as
    Windows hotpatching does. One contiguous write from the padding to the short jump."""
    hop = entry - HOP_SIZE
    if not rel32_reaches(hop + NEAR_SIZE, destination):
        raise FunctionTooShort(f"the padding before {entry:#x} is out of rel32 reach of {destination:#x}")
    rel8 = hop - (entry + len(pad) + SHORT_SIZE)
    code = struct.pack("<Bi", JMP_REL32, destination - (hop + NEAR_SIZE)) + pad + bytes([JMP_REL8, rel8 & 0xFF])
    return Branch(hop, code, "hop")


def is_hop(site: int, entry: int, written: bytes, destination: int) -> bool:
    """Whether `written` at `site` is exactly hop_branch(entry, its landing pad, destination)."""
    pad = written[HOP_SIZE:-SHORT_SIZE]
    if site != entry - HOP_SIZE or len(written) != HOP_SIZE + len(pad) + SHORT_SIZE or landing_pad(pad) != len(pad):
        return False
    try:
        return written == hop_branch(entry, pad, destination).code
    except FunctionTooShort:
        return False


def stub(stub_addr: int, slot_addr: int) -> bytes:
    """jmp *slot(%rip); ud2: calls from the image to code out of rel32 reach."""
    rel = slot_addr - (stub_addr + 6)
    if not -(1 << 31) <= rel < (1 << 31):
        raise RelocationError(f"GOT slot at {slot_addr:#x} out of reach of its stub at {stub_addr:#x}")
    return JMP_RIP_SLOT + struct.pack("<i", rel) + UD2
