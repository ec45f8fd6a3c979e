"""A target under PR_SET_MDWE (no W+X, no exec added later) is still patched: the
image is mapped r-x and its parts only lose permissions."""

from conftest import assert_no_wx, hotpatch


def test_mdwe_target_patched(cc, spawn):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn([binary, "mdwe"])
    r = hotpatch(str(t.pid), patch)
    assert r.returncode == 0, r.stderr
    assert t.ask("compute 5") == "51"
    assert_no_wx(t.maps())
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("compute 5") == "11"
