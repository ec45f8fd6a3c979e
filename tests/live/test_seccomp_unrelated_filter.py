"""A process under a seccomp filter that allows every call hotpatch makes is patched and reverted."""

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("seccomp_allow.c")
FIX = Patch("patch_work.c", TARGET)


def test_unrelated_filter_patched(build, spawn):
    t = spawn(build(TARGET))
    assert t.ask("work 1") == "89"
    r = hotpatch(str(t.pid), build(FIX))
    assert r.returncode == 0, r.stderr
    assert t.ask("work 1") == "1001"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("work 1") == "89"
