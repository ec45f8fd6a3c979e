"""A non-PIE executable (fixed addresses, copy-relocated libc data): apply and revert."""

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fno-PIE", "-no-pie")
FIX = Patch("patch_target.c", TARGET)


def test_apply_revert_non_pie(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    entry = t.symbol_address(binary, "compute")
    assert entry < 0x1000000   # really linked at a fixed low address
    before = t.read_mem(entry, 32)
    assert t.ask("compute 5") == "11"
    r = hotpatch(str(t.pid), build(FIX))
    assert r.returncode == 0, r.stderr
    assert "near jump" in r.stdout
    assert t.read_mem(entry, 32) != before
    assert t.ask("compute 5") == "51"
    assert t.ask("fact 3") == "6000"
    assert t.ask("version") == "v2-patched-calls=1"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("compute 5") == "11"
    assert t.read_mem(entry, 32) == before
