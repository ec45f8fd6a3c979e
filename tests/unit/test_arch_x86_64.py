"""Trampoline and stub encodings, golden bytes, cross-checked with capstone."""

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from hotpatch.arch import get_arch
from hotpatch.errors import FunctionTooShort

X86 = get_arch("x86_64")
CS = Cs(CS_ARCH_X86, CS_MODE_64)
CS.detail = True


def test_near_jump_golden():
    b = X86.branch(0x401000, 0x400000, room=16)
    assert b.form == "near" and b.code == bytes.fromhex("e9fbefffff")
    insn = next(CS.disasm(b.code, 0x401000))
    assert insn.mnemonic == "jmp" and int(insn.op_str, 16) == 0x400000


SITE = 0x5555_0000_1000


@pytest.mark.parametrize("target", [SITE + 5 + (1 << 31) - 1, SITE + 5 - (1 << 31)])
def test_near_jump_edges(target):
    b = X86.branch(SITE, target, room=5)
    assert b.form == "near" and int(next(CS.disasm(b.code, SITE)).op_str, 16) == target
    assert X86.branch(SITE, target + (1 if target > SITE else -1), room=14).form == "far"


def test_far_jump_golden():
    b = X86.branch(0x5555_0000_1000, 0x7F12_3456_7890, room=14)
    assert b.form == "far"
    assert b.code == bytes.fromhex("ff2500000000") + (0x7F12_3456_7890).to_bytes(8, "little")
    insn = next(CS.disasm(b.code, 0x5555_0000_1000))
    assert insn.mnemonic == "jmp" and insn.op_str == "qword ptr [rip]"


def test_too_short():
    with pytest.raises(FunctionTooShort):
        X86.branch(0x1000, 0x2000, room=4)
    with pytest.raises(FunctionTooShort):
        X86.branch(0x1000, 0x7F00_0000_0000, room=13)


def test_stub():
    code = X86.stub(0x10_0000, 0x10_0100)
    insns = list(CS.disasm(code, 0x10_0000))
    assert [i.mnemonic for i in insns] == ["jmp", "ud2"]
    assert insns[0].address + insns[0].size + insns[0].disp == 0x10_0100


def test_landing_pad_and_padding():
    assert X86.landing_pad(bytes.fromhex("f30f1efa55")) == 4
    assert X86.landing_pad(bytes.fromhex("55")) == 0
    assert X86.padding_length(bytes.fromhex("cccc90662e0f1f840000000000")) == 13
    assert X86.padding_length(bytes.fromhex("9055")) == 1


def test_syscall_hijack_clears_restart():
    regs = X86.regs_type()
    regs.rax, regs.orig_rax, regs.rip = (1 << 64) - 512, 0, 0x1234   # -ERESTARTSYS inside read()
    h = X86.hijack_for_syscall(regs, 0x7000, 9, [1, 2, 3, 4, 5, 6])
    assert (h.rip, h.rax, h.orig_rax) == (0x7000, 9, (1 << 64) - 1)
    assert (h.rdi, h.rsi, h.rdx, h.r10, h.r8, h.r9) == (1, 2, 3, 4, 5, 6)
    assert (regs.rip, regs.orig_rax) == (0x1234, 0)      # the saved copy is untouched
    regs.rax = (1 << 64) - 22
    assert X86.syscall_result(regs) == -22
