"""An image out of reach, and a function too short for the long jump form (version():
8 bytes on x86-64 for 14, 12 on AArch64 for 16): refused before anything is mapped."""

import pytest
from harness import ARCH, Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)
FAR_SIZE = {"x86_64": 14, "aarch64": 16}[ARCH]


def test_far_image_refuses_short_function(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    maps = t.maps()
    entry = t.symbol_address(binary, "version")
    code = t.read_mem(entry, 32)
    r = hotpatch(str(t.pid), build(FIX), env={"HOTPATCH_FAR_IMAGE": "1"})
    assert r.returncode == 6, r.stderr
    assert f"{FAR_SIZE}-byte jump" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert t.maps() == maps and t.read_mem(entry, 32) == code
    assert t.ask("version") == "v1"
