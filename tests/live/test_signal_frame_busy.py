"""A thread inside a signal handler whose interrupted pc lies in the function to
replace counts as busy: that pc is found in the signal frame on its stack."""

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("handler_busy.c", "-fPIE", "-pie")
FIX = Patch("patch_work.c", TARGET)


def test_interrupted_pc_in_signal_frame(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    entry = t.symbol_address(binary, "work")
    code, before = t.read_mem(entry, 32), t.maps()
    r = hotpatch(str(t.pid), build(FIX), "--timeout", "0.5")
    assert r.returncode == 3, r.stderr
    assert "work" in r.stderr and "will return into" in r.stderr
    assert t.maps() == before and t.read_mem(entry, 32) == code
    assert t.ask("work 1") == "2"
