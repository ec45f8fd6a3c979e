"""A patch built for another binary is refused (exit 4) and nothing is written."""

from conftest import hotpatch


def test_patch_for_other_binary_refused(cc, spawn):
    target = cc.program("target.c", "-fPIE", "-pie")
    other = cc.program("other.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", target)
    t = spawn(other)
    entry = t.symbol_address(other, "compute")
    code, maps = t.read_mem(entry, 64), t.maps()
    r = hotpatch(str(t.pid), patch)
    assert r.returncode == 4, r.stderr
    assert "has not loaded the binary this patch was built for" in r.stderr
    assert r.stderr.count("\n") == 1
    assert t.read_mem(entry, 64) == code and t.maps() == maps
    assert t.ask("compute 10") == "3"


def test_same_binary_rebuilt_differently_refused(cc, spawn):
    """Same source, different flags: another build-id, so the patch must not apply."""
    target = cc.program("target.c", "-fPIE", "-pie")
    rebuilt = cc.program("target.c", "-fPIE", "-pie", "-O1")
    patch = cc.patch("patch_target.c", target)
    t = spawn(rebuilt)
    maps = t.maps()
    r = hotpatch(str(t.pid), patch)
    assert r.returncode == 4, r.stderr
    assert t.maps() == maps
    assert t.ask("compute 5") == "11"
