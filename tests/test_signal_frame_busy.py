"""A thread inside a signal handler whose interrupted pc lies in the function to
replace counts as busy: that pc is found in the signal frame on its stack."""

from conftest import hotpatch


def test_interrupted_pc_in_signal_frame(cc, spawn):
    binary = cc.program("handler_busy.c", "-fPIE", "-pie")
    patch = cc.patch("patch_work.c", binary)
    t = spawn(binary)
    before = t.maps()
    r = hotpatch(str(t.pid), patch, "--timeout", "0.5")
    assert r.returncode == 3, r.stderr
    assert "work" in r.stderr and "will return into" in r.stderr
    assert t.maps() == before
    assert t.ask("work 1") == "2"
