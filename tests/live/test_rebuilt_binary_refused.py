"""Same source, different flags: another build-id, so the patch must not apply (exit 4)."""

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
REBUILT = Program("target.c", "-fPIE", "-pie", "-O1")
FIX = Patch("patch_target.c", TARGET)


def test_same_binary_rebuilt_differently_refused(build, spawn):
    rebuilt = build(REBUILT)
    t = spawn(rebuilt)
    entry = t.symbol_address(rebuilt, "compute")
    code, maps = t.read_mem(entry, 32), t.maps()
    r = hotpatch(str(t.pid), build(FIX))
    assert r.returncode == 4, r.stderr
    assert "has not loaded the binary this patch was built for" in r.stderr
    assert t.maps() == maps and t.read_mem(entry, 32) == code
    assert t.ask("compute 5") == "11"
