"""Revert refuses a jump that someone else rewrote since (exit 4, naming the function),
and restores nothing: the patch stands as it was."""

import pytest
from harness import ARCH, Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)
# What another tool writes over fact's jump: what -O2 fact starts with.
FOREIGN = {"x86_64": bytes.fromhex("b801000000"),    # mov $1, %eax
           "aarch64": bytes.fromhex("20008052")}     # mov w0, #1


def test_revert_refuses_a_jump_changed_by_someone_else(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    assert hotpatch(str(t.pid), build(FIX)).returncode == 0
    entry = t.symbol_address(binary, "fact")
    t.write_mem(entry, FOREIGN[ARCH])
    compute = t.symbol_address(binary, "compute")
    patched = t.read_mem(compute, 16)
    r = hotpatch("revert", str(t.pid))
    assert r.returncode == 4 and "fact" in r.stderr and "modified" in r.stderr, r.stderr
    assert t.read_mem(compute, 16) == patched      # nothing restored: the patch stands as it was
    assert t.read_mem(entry, len(FOREIGN[ARCH])) == FOREIGN[ARCH]
    assert t.ask("compute 5") == "51"
