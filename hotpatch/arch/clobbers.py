"""Which caller-saved registers a function writes: what its callers may rely on it leaving alone.

gcc's interprocedural register allocation (-fipa-ra, on at -O2 unless -flive-patching or -fno-ipa-ra)
lets a caller keep a value in a caller-saved register across a call to a function of the same file that
it knows leaves that register alone. A replacement writing more of them breaks such a caller.
"""

from capstone import CS_ARCH_ARM64, CS_ARCH_X86, CS_MODE_64, CS_MODE_ARM, Cs

X86_CALLER_SAVED = frozenset({"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11",
                              *(f"xmm{i}" for i in range(16))})
A64_CALLER_SAVED = frozenset({*(f"x{i}" for i in range(19)), *(f"v{i}" for i in range(8)),
                              *(f"v{i}" for i in range(16, 32))})
_X86_FULL = {"eax": "rax", "ax": "rax", "al": "rax", "ah": "rax", "ecx": "rcx", "cx": "rcx", "cl": "rcx",
             "ch": "rcx", "edx": "rdx", "dx": "rdx", "dl": "rdx", "dh": "rdx", "esi": "rsi", "si": "rsi",
             "sil": "rsi", "edi": "rdi", "di": "rdi", "dil": "rdi"}
ALL = None   # it calls something: every caller-saved register


def caller_saved(machine: str) -> frozenset[str]:
    return X86_CALLER_SAVED if machine == "x86_64" else A64_CALLER_SAVED


def written(machine: str, code: bytes) -> frozenset[str] | None:
    """The caller-saved registers `code` writes, or ALL when it calls (or jumps) out of itself."""
    if machine == "x86_64":
        md, saved = Cs(CS_ARCH_X86, CS_MODE_64), X86_CALLER_SAVED
    else:
        md, saved = Cs(CS_ARCH_ARM64, CS_MODE_ARM), A64_CALLER_SAVED
    md.detail = True
    out: set[str] = set()
    for insn in md.disasm(code, 0):
        if insn.mnemonic in ("call", "bl", "blr", "br") or \
                insn.mnemonic in ("jmp", "b") and not insn.op_str.startswith(("0x", "#0x")):
            return ALL   # a call, or a jump through a register
        if insn.mnemonic in ("jmp", "b") and not 0 <= _target(insn) < len(code):
            return ALL   # a tail call
        _read, write = insn.regs_access()
        for reg in write:
            name = _full(insn.reg_name(reg), machine)
            if name in saved:
                out.add(name)
    return frozenset(out)


def _target(insn) -> int:
    try:
        return int(insn.op_str.lstrip("#"), 16)
    except ValueError:
        return -1


def _full(name: str, machine: str) -> str:
    if machine == "x86_64":
        if name.startswith("r") and name[1:].rstrip("dwb").isdigit():
            return "r" + name[1:].rstrip("dwb")
        if name.startswith(("ymm", "zmm")):
            return "xmm" + name[3:]
        return _X86_FULL.get(name, name)
    if name[:1] in ("w", "x") and name[1:].isdigit():
        return "x" + name[1:]
    if name[:1] in ("v", "q", "d", "s", "h", "b") and name[1:].isdigit():
        return "v" + name[1:]
    return name
