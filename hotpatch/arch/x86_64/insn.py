"""x86-64 instruction bytes hotpatch writes or recognises."""

ENDBR64 = b"\xf3\x0f\x1e\xfa"
JMP_REL32 = 0xE9               # jmp rel32 (5 bytes)
# jmp *0(%rip) with the quadword right after it (14 bytes): with a ud2 it
# would need 16, and the shorter form keeps short functions patchable.
JMP_RIP_INDIRECT = b"\xff\x25\x00\x00\x00\x00"
JMP_RIP_SLOT = b"\xff\x25"     # jmp *rel32(%rip)
UD2 = b"\x0f\x0b"
PADDING_MNEMONICS = frozenset({"nop", "int3"})


def padding_length(code: bytes) -> int:
    """Leading bytes of `code` that are alignment padding (nop, int3 of any length)."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    length = 0
    for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, 0):
        if insn.mnemonic not in PADDING_MNEMONICS:
            break
        length = insn.address + insn.size
    return length
