"""A function too short for a 5-byte jump (`xor %eax,%eax; ret`, with or without an endbr64) is replaced
through the alignment padding before it: a jmp rel32 there, and a 2-byte jmp rel8 to it at the entry, as
Windows hotpatching does; reverted, both are restored. x86-64 only (AArch64 has no instruction shorter
than its 4-byte branch)."""

import json

import pytest
from harness import Patch, Program, host_only, hotpatch

pytestmark = host_only("x86-64 only: AArch64 has no function shorter than its branch")

PLAIN = Program("dozen.c", "-falign-functions=1")   # packed: dozen() right after zero(), no padding there
CET = Program("dozen.c", "-falign-functions=1", "-fcf-protection")
FIXES = {"plain": (PLAIN, Patch("patch_zero.c", PLAIN)), "endbr64": (CET, Patch("patch_zero.c", CET))}


@pytest.mark.parametrize("kind", sorted(FIXES))
def test_short_function_through_the_padding(build, spawn, kind):
    program, fix = FIXES[kind]
    t = spawn(build(program))
    assert t.ask("zero") == "0" and t.ask("dozen") == "12"
    r = hotpatch(str(t.pid), build(fix), "--json")
    assert r.returncode == 0, r.stderr
    assert [f["jump"] for f in json.loads(r.stdout)["functions"]] == ["hop"]
    assert t.ask("zero") == "100" and t.ask("dozen") == "12" and t.ask("x") == "15"
    r = hotpatch("list", str(t.pid))
    assert "active" in r.stdout, r.stdout
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("zero") == "0" and t.ask("x") == "15"


SECOND = Patch("patch_zero2.c", PLAIN)


def test_short_function_patched_twice(build, spawn):
    t = spawn(build(PLAIN))
    assert hotpatch(str(t.pid), build(FIXES["plain"][1])).returncode == 0
    r = hotpatch(str(t.pid), build(SECOND))       # its original bytes: the first patch's taken back
    assert r.returncode == 0, r.stderr
    assert t.ask("zero") == "200"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("zero") == "100"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("zero") == "0" and t.ask("dozen") == "12"
