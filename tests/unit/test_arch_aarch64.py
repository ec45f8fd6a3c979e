"""AArch64 encodings: golden bytes decoded with capstone, relocations on real instruction words. No process."""

import ctypes
import os
import shutil
import struct
import subprocess
import tempfile

import pytest
from capstone import CS_ARCH_ARM64, CS_MODE_ARM, Cs
from capstone.arm64 import ARM64_OP_IMM, ARM64_OP_MEM, ARM64_OP_REG

from hotpatch.arch.aarch64 import AArch64
from hotpatch.arch.aarch64.insn import page
from hotpatch.arch.aarch64.registers import strip_pac, user_pt_regs
from hotpatch.arch.aarch64.relocations import RELOCATIONS
from hotpatch.errors import FieldOverflow, FunctionTooShort, RelocationError

A64 = AArch64()
CS = Cs(CS_ARCH_ARM64, CS_MODE_ARM)
CS.detail = True
SITE = 0x5555_0000_1000
MIB128 = 1 << 27
GIB4 = 1 << 32


def le(*words: int) -> bytes:
    return b"".join(struct.pack("<I", w) for w in words)


def decode(code: bytes, address: int) -> list:
    insns = list(CS.disasm(code, address))
    assert sum(i.size for i in insns) == len(code), f"undecodable bytes in {code.hex()}"
    return insns


def imm(insn) -> int:
    """The last immediate operand: capstone gives b/bl/adrp/adr/ldr-literal targets as absolute addresses."""
    return [op.imm for op in insn.operands if op.type == ARM64_OP_IMM][-1]


def mem_disp(insn) -> int:
    return next(op.mem.disp for op in insn.operands if op.type == ARM64_OP_MEM)


# --- trampolines -------------------------------------------------------------

def test_near_branch_golden():
    b = A64.branch(0x40_0000, 0x40_0100, room=4)
    assert b.form == "near" and b.code == bytes.fromhex("40000014")   # b #+0x100
    (insn,) = decode(b.code, 0x40_0000)
    assert insn.mnemonic == "b" and imm(insn) == 0x40_0100
    back = A64.branch(0x40_0100, 0x40_0000, room=4)
    assert back.code == bytes.fromhex("c0ffff17") and imm(decode(back.code, 0x40_0100)[0]) == 0x40_0000


@pytest.mark.parametrize("target", [SITE + MIB128 - 4, SITE - MIB128])
def test_near_branch_edges(target):
    assert A64.in_branch_reach(SITE, target)
    b = A64.branch(SITE, target, room=4)
    (insn,) = decode(b.code, SITE)
    assert b.form == "near" and insn.mnemonic == "b" and imm(insn) == target
    beyond = target + (4 if target > SITE else -4)   # one word past the reach of b
    assert not A64.in_branch_reach(SITE, beyond)
    assert A64.branch(SITE, beyond, room=16).form == "page"


def page_target(insns) -> int:
    """adrp x16 + add x16, x16: the address both compute together."""
    adrp, add = insns[0], insns[1]
    assert adrp.mnemonic == "adrp" and adrp.op_str.startswith("x16,")
    assert add.mnemonic == "add" and add.op_str.startswith("x16, x16,")
    return imm(adrp) + imm(add)


def test_page_branch_golden():
    target = 0x5555_8123_4568
    b = A64.branch(SITE, target, room=12)
    assert b.form == "page"
    # adrp x16, #0x555581234000; add x16, x16, #0x568; br x16
    assert b.code == bytes.fromhex("909140f0" "10a21591" "00021fd6")
    insns = decode(b.code, SITE)
    assert [i.mnemonic for i in insns] == ["adrp", "add", "br"] and insns[2].op_str == "x16"
    assert page_target(insns) == target


@pytest.mark.parametrize("target", [page(SITE) + GIB4 - 4096 + 0xFFC, page(SITE) - GIB4])
def test_page_branch_edges(target):
    b = A64.branch(SITE, target, room=12)
    assert b.form == "page" and page_target(decode(b.code, SITE)) == target
    beyond = target + (4096 if target > SITE else -4096)   # one page past adrp's reach
    assert A64.branch(SITE, beyond, room=16).form == "far"
    with pytest.raises(FunctionTooShort):
        A64.branch(SITE, beyond, room=15)


def test_far_branch_golden():
    target = 0x7F12_3456_7890
    b = A64.branch(SITE, target, room=16)
    assert b.form == "far"
    assert b.code == bytes.fromhex("50000058" "00021fd6") + target.to_bytes(8, "little")
    ldr, br = decode(b.code[:8], SITE)
    assert ldr.mnemonic == "ldr" and ldr.op_str.startswith("x16,") and imm(ldr) == SITE + 8
    assert br.mnemonic == "br" and br.op_str == "x16"
    literal = imm(ldr) - SITE
    assert struct.unpack_from("<Q", b.code, literal)[0] == target


def test_shortest_form_that_fits():
    assert A64.branch(SITE, SITE + 0x1000, room=64).form == "near"
    assert A64.branch(SITE, SITE + (1 << 30), room=64).form == "page"
    assert A64.branch(SITE, SITE + (1 << 30), room=15).form == "page"
    assert A64.branch(SITE, 0x7F00_0000_0000, room=16).form == "far"


@pytest.mark.parametrize("target, room", [
    (SITE + 0x100, 3),             # nothing fits in 3 bytes
    (SITE + (1 << 30), 11),        # needs the 12-byte adrp form
    (0x7F00_0000_0000, 15),        # needs the 16-byte literal form
])
def test_too_short(target, room):
    with pytest.raises(FunctionTooShort):
        A64.branch(SITE, target, room)


def test_misaligned_branch():
    with pytest.raises(RelocationError, match="4-byte aligned"):
        A64.branch(SITE + 2, SITE + 0x100, room=16)
    with pytest.raises(RelocationError, match="4-byte aligned"):
        A64.branch(SITE, SITE + 0x101, room=16)


def test_stub_golden():
    code = A64.stub(0x40_1000, 0x40_0FF8)
    assert len(code) == A64.stub_size == 16
    # adrp x16, #0x400000; ldr x16, [x16, #0xff8]; br x16; brk #0
    assert code == bytes.fromhex("f0fffff0" "10fe47f9" "00021fd6" "000020d4")
    adrp, ldr, br, brk = decode(code, 0x40_1000)
    assert (adrp.mnemonic, ldr.mnemonic, br.mnemonic, brk.mnemonic) == ("adrp", "ldr", "br", "brk")
    assert adrp.op_str.startswith("x16,") and ldr.op_str.startswith("x16, [x16")
    assert imm(adrp) + mem_disp(ldr) == 0x40_0FF8 and br.op_str == "x16"


def test_stub_far_slot_and_misalignment():
    slot = 0x7F00_0000_0010
    adrp, ldr, _, _ = decode(A64.stub(slot + 0xFFFF_F000, slot), slot + 0xFFFF_F000)   # ~4 GiB below
    assert imm(adrp) + mem_disp(ldr) == slot
    with pytest.raises(RelocationError, match="out of adrp reach"):
        A64.stub(slot + GIB4 + 0x1000, slot)
    with pytest.raises(RelocationError, match="misaligned"):
        A64.stub(0x40_1000, 0x40_0FF4)


# --- entry, padding, registers ----------------------------------------------

BTI_C, PACIASP, PACIBSP, BTI, BTI_JC, NOP = (0xD503245F, 0xD503233F, 0xD503237F, 0xD503241F,
                                             0xD50324DF, 0xD503201F)
STP = 0xA9BF7BFD   # stp x29, x30, [sp, #-16]!


@pytest.mark.parametrize("entry", [BTI_C, PACIASP, PACIBSP, BTI, BTI_JC])
def test_landing_pads(entry):
    assert A64.landing_pad(le(entry, STP)) == 4
    assert len(A64.entry_rewrite(le(entry, STP))) == 4


def test_no_landing_pad():
    assert A64.landing_pad(le(STP, NOP)) == 0 and A64.entry_rewrite(le(STP)) == b""
    assert A64.landing_pad(b"\x5f\x24") == 0


@pytest.mark.parametrize("entry", [PACIASP, PACIBSP])
def test_pac_entry_becomes_bti_c(entry):
    new = A64.entry_rewrite(le(entry, STP))
    assert new == le(BTI_C)
    (insn,) = decode(new, 0)
    assert (insn.mnemonic, insn.op_str) == ("bti", "c")


def test_bti_entry_kept():
    assert A64.entry_rewrite(le(BTI_C, STP)) == le(BTI_C)
    assert A64.entry_rewrite(le(BTI_JC, STP)) == le(BTI_JC)


def test_padding_length():
    assert A64.padding_length(le(NOP, NOP, 0, STP)) == 12
    assert A64.padding_length(le(STP, NOP)) == 0
    assert A64.padding_length(le(NOP) + b"\x1f\x20") == 4     # a partial word is not padding
    assert A64.padding_length(b"") == 0


def test_strip_pac():
    assert strip_pac(0x007F_0000_5555_1234) == 0x5555_1234
    assert strip_pac(0xA93C_FFFF_8000_1004) == 0xFFFF_8000_1004   # PAC bits in 48..54 and 56..63
    assert strip_pac(0x0000_7FFF_0000_0004) == 0x7FFF_0000_0004
    assert strip_pac(0x1280_0000_0000_1000) == 0xFFFF_0000_0000_1000   # bit 55 set: upper half
    assert strip_pac(0x000F_F000_0000_1000, va_bits=52) == 0x000F_F000_0000_1000


def test_regs_layout_and_lr():
    assert ctypes.sizeof(user_pt_regs) == 34 * 8   # regs[31], sp, pc, pstate
    regs = user_pt_regs()
    regs.regs[30] = 0x3A00_5555_0000_1234   # a signed return address
    regs.pc, regs.sp = 0x5555_0000_2000, 0x7FFF_F000
    assert A64.pc(regs) == 0x5555_0000_2000 and A64.sp(regs) == 0x7FFF_F000
    assert A64.thread_view(regs) == ((0x5555_0000_2000, 0x5555_0000_1234), 0x7FFF_F000, 1 << 64)


def test_syscall_hijack():
    regs = user_pt_regs()
    for i in range(31):
        regs.regs[i] = 100 + i
    regs.pc, regs.sp, regs.pstate = 0x1234, 0x7000, 0x6000_0000
    h = A64.hijack_for_syscall(regs, 0x7F00_0000_0040, A64.syscall_numbers["mmap"], [0, 4096, 5, 0x22, -1, 0])
    assert h.pc == 0x7F00_0000_0040 and h.regs[8] == 222
    assert list(h.regs[0:6]) == [0, 4096, 5, 0x22, (1 << 64) - 1, 0]
    assert list(h.regs[6:8]) == [106, 107] and list(h.regs[9:31]) == list(range(109, 131))
    assert (h.sp, h.pstate) == (0x7000, 0x6000_0000)
    assert regs.pc == 0x1234 and regs.regs[0] == 100 and regs.regs[8] == 108   # saved copy untouched
    regs.regs[0] = (1 << 64) - 17
    assert A64.syscall_result(regs) == -17
    regs.regs[0] = 0x7F00_0000_0000
    assert A64.syscall_result(regs) == 0x7F00_0000_0000


def test_syscall_insn_and_constants():
    (insn,) = decode(A64.syscall_insn, 0)
    assert (insn.mnemonic, insn.op_str) == ("svc", "#0")
    assert A64.after_syscall_insn(0x1000) == 0x1004
    assert (A64.name, A64.e_machine, A64.syscall_insn_align) == ("aarch64", 183, 4)
    assert A64.got_reloc_types == {1025, 1026}
    assert (A64.near_branch_size, A64.far_branch_size) == (4, 16)


# --- relocations on real instruction words -------------------------------------

ADRP_X0 = 0x90000000        # adrp x0, #0
ADR_X0 = 0x10000000         # adr x0, #0
ADD_X0_X0 = 0x91000000      # add x0, x0, #0
LDRB_W1 = 0x39400001        # ldrb w1, [x0]
LDRH_W1 = 0x79400001        # ldrh w1, [x0]
LDR_W1 = 0xB9400001         # ldr w1, [x0]
LDR_X1 = 0xF9400001         # ldr x1, [x0]
LDR_Q1 = 0x3DC00001         # ldr q1, [x0]
STR_X1 = 0xF9000001         # str x1, [x0]
LDR_X0_LIT = 0x58000000     # ldr x0, #0
B_ = 0x14000000             # b #0
BL = 0x94000000             # bl #0
B_EQ = 0x54000000           # b.eq #0
CBZ_X0 = 0xB4000000         # cbz x0, #0
TBZ_W0 = 0x36000000         # tbz w0, #0, #0


def test_base_words_are_what_they_say():
    expect = {ADRP_X0: ("adrp", "x0, #0x1000"), ADR_X0: ("adr", "x0, #0x1000"),
              ADD_X0_X0: ("add", "x0, x0, #0"), LDRB_W1: ("ldrb", "w1, [x0]"),
              LDRH_W1: ("ldrh", "w1, [x0]"), LDR_W1: ("ldr", "w1, [x0]"), LDR_X1: ("ldr", "x1, [x0]"),
              LDR_Q1: ("ldr", "q1, [x0]"), STR_X1: ("str", "x1, [x0]"), LDR_X0_LIT: ("ldr", "x0, #0x1000"),
              B_: ("b", "#0x1000"), BL: ("bl", "#0x1000"), B_EQ: ("b.eq", "#0x1000"),
              CBZ_X0: ("cbz", "x0, #0x1000"), TBZ_W0: ("tbz", "w0, #0, #0x1000")}
    for w, (mnemonic, op_str) in expect.items():
        (insn,) = decode(le(w), 0x1000)
        assert (insn.mnemonic, insn.op_str) == (mnemonic, op_str), hex(w)


def apply(r_type: int, insn_word: int, s: int, a: int, p: int, g: int = 0):
    """Relocate one word placed at offset 4 of a buffer at address p - 4; return the decoded insn."""
    rtype = RELOCATIONS[r_type]
    buf = bytearray(le(NOP, insn_word, NOP))
    rtype.store(buf, 4, rtype.compute(s, a, p, g))
    assert buf[:4] == le(NOP) and buf[8:] == le(NOP)   # neighbours untouched
    (insn,) = decode(bytes(buf[4:8]), p)
    return insn


P = 0x5555_0000_2010


@pytest.mark.parametrize("s", [0x5555_1234_5678, 0x5554_8000_0123, page(P) + GIB4 - 4096, page(P) - GIB4])
def test_adr_prel_pg_hi21(s):
    insn = apply(275, ADRP_X0, s, 0, P)
    assert insn.mnemonic == "adrp" and insn.op_str.startswith("x0,") and imm(insn) == page(s)
    assert imm(apply(276, ADRP_X0, s - 8, 8, P)) == page(s)


@pytest.mark.parametrize("s", [page(P) + GIB4, page(P) - GIB4 - 4096])
def test_adr_prel_pg_hi21_overflow(s):
    with pytest.raises(FieldOverflow):
        apply(275, ADRP_X0, s, 0, P)


def test_adrp_add_pair():
    s = 0x5555_1234_5678
    adrp = apply(275, ADRP_X0, s, 0, P)
    add = apply(277, ADD_X0_X0, s, 0, P + 4)
    assert add.mnemonic == "add" and add.op_str.startswith("x0, x0,")
    assert imm(adrp) + imm(add) == s


def test_adr_prel_lo21():
    insn = apply(274, ADR_X0, P + 0xFFFFC, 0, P)
    assert insn.mnemonic == "adr" and imm(insn) == P + 0xFFFFC
    assert imm(apply(274, ADR_X0, P - 0x100000, 0, P)) == P - 0x100000
    with pytest.raises(FieldOverflow):
        apply(274, ADR_X0, P + 0x100000, 0, P)


@pytest.mark.parametrize("r_type, insn_word, size", [
    (278, LDRB_W1, 1), (284, LDRH_W1, 2), (285, LDR_W1, 4), (286, LDR_X1, 8), (286, STR_X1, 8),
    (299, LDR_Q1, 16)])
def test_ldst_lo12(r_type, insn_word, size):
    s = 0x5555_1234_5000 + 0x1000 - size    # the last aligned slot of the page: largest imm12
    insn = apply(r_type, insn_word, s - 0x10, 0x10, P)
    assert mem_disp(insn) == 0x1000 - size and insn.op_str.endswith(f"[x0, #{0x1000 - size:#x}]")
    assert mem_disp(apply(r_type, insn_word, 0x5555_1234_5000, 0, P)) == 0
    if size > 1:
        with pytest.raises(FieldOverflow, match="aligned"):
            apply(r_type, insn_word, s + size // 2, 0, P)


def test_ldst_lo12_replaces_existing_field():
    insn = apply(286, 0xF9400000 | (0x1FF << 10) | 1, 0x7000_0000_0008, 0, P)   # ldr x1, [x0, #0xff8]
    assert mem_disp(insn) == 8 and insn.op_str == "x1, [x0, #8]"


@pytest.mark.parametrize("r_type, insn_word, mnemonic", [(282, B_, "b"), (283, BL, "bl")])
def test_jump26_call26(r_type, insn_word, mnemonic):
    for s in (P + 0x1234, P - 0x40, P + MIB128 - 4, P - MIB128):
        insn = apply(r_type, insn_word, s, 0, P)
        assert insn.mnemonic == mnemonic and imm(insn) == s
    assert RELOCATIONS[r_type].is_call and not RELOCATIONS[r_type].needs_got
    for s in (P + MIB128, P - MIB128 - 4, P + 2):
        with pytest.raises(FieldOverflow):
            apply(r_type, insn_word, s, 0, P)


@pytest.mark.parametrize("r_type, insn_word, mnemonic, operands, reach", [
    (280, B_EQ, "b.eq", "", 1 << 20), (280, CBZ_X0, "cbz", "x0, ", 1 << 20),
    (279, TBZ_W0, "tbz", "w0, #0, ", 1 << 15), (273, LDR_X0_LIT, "ldr", "x0, ", 1 << 20)])
def test_short_pc_relative(r_type, insn_word, mnemonic, operands, reach):
    for s in (P + reach - 4, P - reach, P + 8):
        insn = apply(r_type, insn_word, s, 0, P)
        assert insn.mnemonic == mnemonic and imm(insn) == s and insn.op_str == f"{operands}#{s:#x}"
    for s in (P + reach, P - reach - 4, P + 6):
        with pytest.raises(FieldOverflow):
            apply(r_type, insn_word, s, 0, P)


def test_got_relocations():
    g = 0x5555_0000_0FF8   # the image's GOT slot of the symbol; S is wherever the symbol is
    s = 0x7F00_1234_5678
    adrp = apply(311, ADRP_X0, s, 0, P, g)
    ldr = apply(312, LDR_X1, s, 0, P + 4, g)
    assert imm(adrp) + mem_disp(ldr) == g
    assert RELOCATIONS[311].needs_got and RELOCATIONS[312].needs_got
    lit = apply(309, LDR_X0_LIT, s, 0, P, g)
    assert imm(lit) == g and RELOCATIONS[309].needs_got
    with pytest.raises(FieldOverflow):
        apply(312, LDR_X1, s, 0, P, g + 4)   # a slot is 8-byte aligned or the load cannot reach it
    with pytest.raises(FieldOverflow):
        apply(311, ADRP_X0, s, 0, P, P + GIB4)
    with pytest.raises(RelocationError, match="addend"):
        apply(311, ADRP_X0, s, 8, P, g)


def test_data_relocations():
    buf = bytearray(8)
    RELOCATIONS[257].store(buf, 0, RELOCATIONS[257].compute(0x7F00_1234_5678, 0x10, 0, 0))
    assert struct.unpack("<Q", buf)[0] == 0x7F00_1234_5688
    RELOCATIONS[260].store(buf, 0, RELOCATIONS[260].compute(0x1000, 0, 0x7F00_0000_0000, 0))
    assert struct.unpack("<q", buf)[0] == 0x1000 - 0x7F00_0000_0000
    buf = bytearray(4)
    RELOCATIONS[261].store(buf, 0, RELOCATIONS[261].compute(P - 0x100, 0, P, 0))
    assert struct.unpack("<i", buf)[0] == -0x100
    with pytest.raises(FieldOverflow):
        RELOCATIONS[261].store(buf, 0, RELOCATIONS[261].compute(P + (1 << 31), 0, P, 0))
    assert RELOCATIONS[261].width == 4 and RELOCATIONS[257].width == 8


@pytest.mark.parametrize("r_type", [541, 542, 549, 551, 560, 561, 566, 512, 573])
def test_tls_models_refused(r_type):
    rtype = RELOCATIONS[r_type]
    assert rtype.name.startswith("R_AARCH64_TLS")
    with pytest.raises(RelocationError, match="thread-local"):
        rtype.compute(0, 0, 0, 0)


def test_tls_descriptor_relocations():
    """adrp/ldr/add of a TLS descriptor reach the image's pair (G); the call marker writes nothing."""
    desc, place = 0x7F00_0000_2010, 0x7F00_0000_0000
    for r_type in (562, 563, 564, 569):
        assert RELOCATIONS[r_type].tls_index and RELOCATIONS[r_type].refusal is None
    assert RELOCATIONS[562].compute(0, 0, place, desc) == 0x2000   # page difference
    assert RELOCATIONS[563].compute(0, 0, place, desc) == desc
    word = bytearray(struct.pack("<I", 0xF9400001))                # ldr x1, [x0]
    RELOCATIONS[563].store(word, 0, desc)
    assert struct.unpack("<I", word)[0] == 0xF9400001 | (0x010 >> 3) << 10
    blr = bytearray(struct.pack("<I", 0xD63F0020))
    RELOCATIONS[569].store(blr, 0, RELOCATIONS[569].compute(0, 0, place, desc))
    assert struct.unpack("<I", blr)[0] == 0xD63F0020


def test_table_names():
    assert RELOCATIONS[541].name == "R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21"
    assert RELOCATIONS[562].name == "R_AARCH64_TLSDESC_ADR_PAGE21"
    assert RELOCATIONS[569].name == "R_AARCH64_TLSDESC_CALL"
    assert RELOCATIONS[299].name == "R_AARCH64_LDST128_ABS_LO12_NC"
    with pytest.raises(RelocationError, match="large code model"):
        RELOCATIONS[263].compute(0, 0, 0, 0)
    assert 0 not in RELOCATIONS


# --- a real aarch64 gcc object, linked by the generic linker --------------------

CROSS_CC = shutil.which("aarch64-linux-gnu-gcc")
PATCH_C = r"""
#include <stdio.h>
#include <string.h>
extern int requests;                       /* GOT: ADR_GOT_PAGE + LD64_GOT_LO12_NC */
extern const char *salutation(void);       /* CALL26, near */
extern void log_line(const char *);        /* JUMP26 (tail call) */
static unsigned char flags8 = 1;           /* LDST8 */
static unsigned short count16 = 2;         /* LDST16 */
static unsigned int count32 = 3;           /* LDST32 */
static unsigned long count64 = 4;          /* LDST64 */
static const char *names[] = {"zero", "one", "two"};   /* ABS64 in .data.rel.ro */
int (*hook)(char *, size_t, const char *, ...) = snprintf;

int greet(const char *name, char *out, size_t size)
{
    requests++;
    flags8 ^= 1; count16++; count32 += 3; count64 <<= 1;
    return snprintf(out, size, "%s, %.31s %s %d", salutation(), name,
                    names[(flags8 + count16 + count32 + count64) % 3], (int)strlen(name));
}

void tail(const char *s) { log_line(s); }
"""


@pytest.fixture(scope="module")
def cross_obj():
    if CROSS_CC is None:
        pytest.skip("aarch64-linux-gnu-gcc is not installed")
    from hotpatch.elf.relocatable import parse_relocatable
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "patch.c"), os.path.join(d, "patch.o")
        with open(src, "w") as f:
            f.write(PATCH_C)
        subprocess.run([CROSS_CC, "-c", "-O2", "-fPIC", "-ffunction-sections", "-fdata-sections",
                        "-fno-common", "-fno-asynchronous-unwind-tables", "-o", out, src], check=True)
        with open(out, "rb") as f:
            return parse_relocatable(f.read())


def addresses(image, symbol: str) -> tuple[list, set[int]]:
    """Decode a function of the image; the addresses its adrp pairs and branches compute."""
    start = image.symbols[symbol]
    insns = list(CS.disasm(bytes(image.data[start - image.base:start - image.base + 512]), start))
    pages, found = {}, set()
    for insn in insns:
        regs = [insn.reg_name(op.reg) for op in insn.operands if op.type == ARM64_OP_REG]
        if insn.mnemonic == "adrp":
            pages[regs[0]] = imm(insn)
        elif insn.mnemonic in ("b", "bl"):
            found.add(imm(insn))
        elif insn.mnemonic == "add" and len(regs) == 2 and regs[1] in pages:
            found.add(pages[regs[1]] + imm(insn))
        else:
            for op in insn.operands:
                if op.type == ARM64_OP_MEM and insn.reg_name(op.mem.base) in pages:
                    found.add(pages[insn.reg_name(op.mem.base)] + op.mem.disp)
        if insn.mnemonic == "ret" or (insn.mnemonic == "b" and symbol == "tail"):
            break
    return insns, found


def test_cross_compiled_patch_links(cross_obj):
    from hotpatch.link.linker import plan_layout
    assert cross_obj.machine == "aarch64"
    present = {r.r_type for relocs in cross_obj.relocations.values() for r in relocs}
    assert present and present <= set(RELOCATIONS), sorted(present - set(RELOCATIONS))
    assert not any(RELOCATIONS[t].name.startswith("R_AARCH64_TLS") for t in present)

    plan = plan_layout(cross_obj, A64, header_size=4096)
    base = 0x5555_6000_0000
    syms = {"requests": base - 0x10_0000, "salutation": base - 0x20_0000,   # near: direct bl
            "log_line": base - 0x30_0000, "strlen": base - 0x40_0000,
            "snprintf": 0x7F00_1234_5678}                                    # ~40 TiB away: veneer
    image = plan.link(base, syms.get)

    def slot_of(name: str) -> int:
        return base + plan.got_offset + 8 * plan.got_keys.index(name)

    def read_q(address: int) -> int:
        return struct.unpack_from("<Q", image.data, address - base)[0]

    insns, found = addresses(image, "greet")
    assert syms["salutation"] in found and syms["strlen"] in found
    assert read_q(slot_of("requests")) == syms["requests"] and slot_of("requests") in found
    for name in ("flags8", "count16", "count32", "count64"):
        sec = next(s for s in cross_obj.sections.values() if s.name == ".data." + name)
        assert base + plan.section_offsets[sec.index] in found, name
    # snprintf is out of bl reach: the call lands on a veneer reading its GOT slot
    calls = [imm(i) for i in insns if i.mnemonic in ("bl", "b")]
    stub = base + plan.stub_offset + A64.stub_size * plan.stub_keys.index("snprintf")
    assert stub in calls
    adrp, ldr, br, _ = decode(bytes(image.data[stub - base:stub - base + 16]), stub)
    assert br.mnemonic == "br" and br.op_str == "x16"
    assert imm(adrp) + mem_disp(ldr) == slot_of("snprintf") and read_q(slot_of("snprintf")) == syms["snprintf"]
    # tail call: b log_line
    _, tail_found = addresses(image, "tail")
    assert syms["log_line"] in tail_found
    # ABS64: the function pointer and the string table hold absolute addresses
    assert read_q(image.symbols["hook"]) == syms["snprintf"]


def test_cross_compiled_entries_with_branch_protection():
    if CROSS_CC is None:
        pytest.skip("aarch64-linux-gnu-gcc is not installed")
    from hotpatch.elf.relocatable import parse_relocatable
    src = "extern int leafy(int);\nint nonleaf(int x) { return leafy(x) + 1; }\nint leaf(int x) { return x * 3; }\n"
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "e.c"), "w") as f:
            f.write(src)
        subprocess.run([CROSS_CC, "-c", "-O2", "-fPIC", "-ffunction-sections", "-mbranch-protection=standard",
                        "-o", os.path.join(d, "e.o"), os.path.join(d, "e.c")], check=True)
        with open(os.path.join(d, "e.o"), "rb") as f:
            obj = parse_relocatable(f.read())
    code = {s.name: obj.sections[s.shndx].data[s.value:s.value + s.size] for s in obj.defined_functions()}
    assert A64.landing_pad(code["leaf"]) == 4 and A64.entry_rewrite(code["leaf"]) == code["leaf"][:4]
    assert decode(code["nonleaf"][:4], 0)[0].mnemonic == "paciasp"
    assert A64.landing_pad(code["nonleaf"]) == 4 and A64.entry_rewrite(code["nonleaf"]) == le(BTI_C)
