"""An image out of rel32 reach (HOTPATCH_FAR_IMAGE): 14-byte absolute jumps at the
entries, calls to the target and to libc through stubs and GOT slots; revert restores."""

import json

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from conftest import hotpatch, image_of




def test_far_image_refuses_short_function(cc, spawn):
    """version() has 8 bytes: too few for the 14-byte form; refused before anything is mapped."""
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn(binary)
    maps = t.maps()
    r = hotpatch(str(t.pid), patch, env={"HOTPATCH_FAR_IMAGE": "1"})
    assert r.returncode == 6 and "14-byte jump" in r.stderr, r.stderr
    assert t.maps() == maps


def test_far_image(cc, spawn):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_far.c", binary)
    t = spawn(binary)
    entry = t.symbol_address(binary, "compute")
    before = t.read_mem(entry, 16)
    r = hotpatch(str(t.pid), patch, "--json", env={"HOTPATCH_FAR_IMAGE": "1"})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {f["jump"] for f in report["functions"]} == {"far"}
    base, _ = image_of(report)
    assert abs(base - entry) > 1 << 31
    insn = next(Cs(CS_ARCH_X86, CS_MODE_64).disasm(t.read_mem(entry, 14), entry))
    assert insn.mnemonic == "jmp" and insn.op_str == "qword ptr [rip]"
    assert t.ask("inc") == "42"
    assert t.ask("compute 5") == "52"      # helper, counter and libc reached from far away
    assert t.ask("fact 3") == "6000"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.read_mem(entry, 16) == before
    assert t.ask("compute 5") == "11"
