"""A process under PR_SET_MDWE (no W+X, no exec added later) is still patched: the
image is mapped r-x and its parts only lose permissions."""

import pytest
from harness import Patch, Program, Target, assert_no_wx, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def test_mdwe_target_patched(build, spawn):
    binary = build(TARGET)
    t: Target = spawn([binary, "mdwe"], ready_prefix=None)
    line = t.readline()
    if line == "mdwe unsupported":
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert line == f"ready {t.pid} mdwe=1", line     # refusing exec gain is in force
    r = hotpatch(str(t.pid), build(FIX))
    assert r.returncode == 0, r.stderr
    assert t.ask("compute 5") == "51"
    assert_no_wx(t.maps())
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("compute 5") == "11"
