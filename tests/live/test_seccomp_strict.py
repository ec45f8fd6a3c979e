"""A process in seccomp strict mode (only read, write, _exit and sigreturn) can make none of the system
calls a patch needs: refused before anything is done, with the reason, and the process goes on."""

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("seccomp_strict.c", "-fPIE", "-pie")
FIX = Patch("patch_work.c", TARGET)


def test_strict_mode_refused(build, spawn):
    t = spawn(build(TARGET))
    r = hotpatch(str(t.pid), build(FIX))
    assert r.returncode != 0 and "seccomp strict mode" in r.stderr, r.stderr
    assert t.status("TracerPid") == "0" and t.status("Seccomp") == "1"
    t.send("x")
    assert t.readline() == "x"   # echoed: still running, untouched
