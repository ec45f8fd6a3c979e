"""A patch built for another binary (with a function of the same name) is refused (exit 4)
and nothing is written."""

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
OTHER = Program("other.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def test_patch_for_other_binary_refused(build, spawn):
    other = build(OTHER)
    t = spawn(other)
    entry = t.symbol_address(other, "compute")
    code, maps = t.read_mem(entry, 64), t.maps()
    r = hotpatch(str(t.pid), build(FIX))
    assert r.returncode == 4, r.stderr
    assert "has not loaded the binary this patch was built for" in r.stderr
    assert r.stderr.count("\n") == 1
    assert t.read_mem(entry, 64) == code and t.maps() == maps
    assert t.ask("compute 10") == "3"
