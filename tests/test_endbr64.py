"""-fcf-protection entries start with endbr64: it must stay, and the jump goes after it."""

import json

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from conftest import hotpatch

ENDBR64 = bytes.fromhex("f30f1efa")


def test_endbr64_kept(cc, spawn):
    binary = cc.program("target.c", "-fcf-protection=full", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary, "--cflags", "-fcf-protection=full")
    t = spawn(binary)
    entry = t.symbol_address(binary, "compute")
    before = t.read_mem(entry, 16)
    assert before.startswith(ENDBR64)
    r = hotpatch(str(t.pid), patch, "--json")
    assert r.returncode == 0, r.stderr
    new = int(next(f["new"] for f in json.loads(r.stdout)["functions"] if f["name"] == "compute"), 16)
    after = t.read_mem(entry, 16)
    assert after.startswith(ENDBR64)
    insn = next(Cs(CS_ARCH_X86, CS_MODE_64).disasm(after[4:], entry + 4))
    assert insn.mnemonic == "jmp" and int(insn.op_str, 16) == new
    assert t.ask("compute 5") == "51"
    assert t.ask("ptr 2") == "45"          # an indirect call lands on the kept endbr64
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.read_mem(entry, 16) == before
    assert t.ask("compute 5") == "11"
