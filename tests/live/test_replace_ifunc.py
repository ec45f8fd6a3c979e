"""Replacing an IFUNC: libc's strlen, in a running program. The patch replaces the implementation this
machine's loader chose (known from hotpatch's own copy of the same libc), says which, and apply checks it is
the one the process uses; every caller, inside libc too, reaches the new code; revert restores it."""

import json
import os

from harness import Program, host_only, hotpatch

pytestmark = host_only("the patch is built against this host's libc")
TARGET = Program("measure.c")


def libc_of(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return next(line.split()[-1] for line in f if os.path.basename(line.split()[-1]).startswith("libc.so"))


def test_replace_strlen(build, spawn, tmp_path):
    t = spawn(build(TARGET))
    assert t.ask("len abcd") == "4"
    fix = str(tmp_path / "strlen.hp")
    r = hotpatch("build", "fixtures/patch_strlen.c", "--target", libc_of(t.pid), "-o", fix)
    assert r.returncode == 0, r.stderr
    assert "strlen is an IFUNC" in r.stderr and "the implementation this machine's loader chooses" in r.stderr
    r = hotpatch(str(t.pid), fix, "--json")
    assert r.returncode == 0, r.stderr
    assert [f["name"] for f in json.loads(r.stdout)["functions"]] == ["strlen"]
    assert t.ask("len abcd") == "5" and t.ask("len ") == "1"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("len abcd") == "4"
