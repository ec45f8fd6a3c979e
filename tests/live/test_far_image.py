"""An image out of reach of the short jumps (HOTPATCH_FAR_IMAGE): the long jump form at
the entries (x86-64: jmp [rip] with the address inline; AArch64: ldr x16, #8; br x16),
calls to the process and to libc through stubs / veneers and GOT slots; revert restores."""

import json

import pytest
from harness import ARCH, Patch, Program, decode_jump, hotpatch, image_of, new_address

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_far.c", TARGET)
FAR_FORM = {"x86_64": bytes.fromhex("ff2500000000"),                 # jmp qword ptr [rip]
            "aarch64": bytes.fromhex("50000058" "00021fd6")}[ARCH]  # ldr x16, #8; br x16


def test_far_image(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    entries = {f: t.symbol_address(binary, f) for f in ("compute", "fact")}
    before = {f: t.read_mem(a, 32) for f, a in entries.items()}
    r = hotpatch(str(t.pid), build(FIX), "--json", env={"HOTPATCH_FAR_IMAGE": "1"})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {f["jump"] for f in report["functions"]} == {"far"}
    base, _ = image_of(report)
    for f, a in entries.items():
        code = t.read_mem(a, 32)
        assert code.startswith(FAR_FORM), (f, code.hex())
        assert decode_jump(ARCH, code, a) == ("far", new_address(report, f)), f
        assert abs(base - a) > 1 << 32      # out of reach of every shorter form
    assert t.ask("inc") == "42"
    assert t.ask("compute 5") == "52"      # helper, counter and libc reached from far away
    assert t.ask("fact 3") == "6000"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert {f: t.read_mem(a, 32) for f, a in entries.items()} == before
    assert t.ask("compute 5") == "11"
