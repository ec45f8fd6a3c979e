"""Entries protected against indirect-branch hijacking keep their landing pad: the jump
goes after it, and indirect calls (a pointer taken before the patch) land on it.

x86-64 -fcf-protection: endbr64 stays. AArch64 -mbranch-protection=standard: bti c stays,
paciasp becomes bti c (the new code signs its own return address)."""

import json
import struct

import pytest
from harness import ARCH, Patch, Program, decode_jump, hotpatch, new_address

pytestmark = pytest.mark.arm64

ENDBR64 = bytes.fromhex("f30f1efa")
BTI_C, PACIASP = struct.pack("<I", 0xD503245F), struct.pack("<I", 0xD503233F)
FLAG = {"x86_64": "-fcf-protection=full", "aarch64": "-mbranch-protection=standard"}[ARCH]
# entry instruction of each function before, and after the patch
ENTRIES = {"x86_64": {"compute": (ENDBR64, ENDBR64), "fact": (ENDBR64, ENDBR64), "version": (ENDBR64, ENDBR64)},
           "aarch64": {"compute": (PACIASP, BTI_C),       # non-leaf: signs its return address
                       "fact": (BTI_C, BTI_C), "version": (BTI_C, BTI_C)}}[ARCH]

TARGET = Program("target.c", "-fPIE", "-pie", FLAG)
FIX = Patch("patch_target.c", TARGET, "--cflags", FLAG)


def test_landing_pads_kept(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    entries = {f: t.symbol_address(binary, f) for f in ENTRIES}
    before = {f: t.read_mem(a, 32) for f, a in entries.items()}
    for f, (pad, _) in ENTRIES.items():
        assert before[f].startswith(pad), (f, before[f].hex())
    r = hotpatch(str(t.pid), build(FIX), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for f, (_, kept) in ENTRIES.items():
        after = t.read_mem(entries[f], 32)
        assert after.startswith(kept), (f, after.hex())
        site = entries[f] + len(kept)
        assert decode_jump(ARCH, after[len(kept):], site) == ("near", new_address(report, f)), f
    assert t.ask("compute 5") == "51"
    assert t.ask("ptr 2") == "45"          # an indirect call lands on the kept pad
    assert t.ask("ptr 5") == "51"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert {f: t.read_mem(a, 32) for f, a in entries.items()} == before
    assert t.ask("compute 5") == "11"
