"""A process id that exists nowhere: exit 5, one line (or one JSON object) saying so."""

import json

from harness import Patch, Program, hotpatch

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)
NO_SUCH_PID = "4194000"   # above the kernel's pid_max limit (2**22): never a process


def test_missing_process(build):
    r = hotpatch(NO_SUCH_PID, build(FIX))
    assert r.returncode == 5
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "does not exist" in r.stderr, r.stderr
    r = hotpatch("list", NO_SUCH_PID, "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 5 and out["exit_code"] == 5 and out["status"] == "error"
    assert "does not exist" in out["message"]
