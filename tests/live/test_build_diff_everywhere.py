"""`build --diff` on both architectures: the project's fix (fixtures/diffs/project-fix.patch) built for the
project's binary as built by its Makefile, here and, cross-built, in the ARM64 guest (tests/arm64): there
the new code reaches file-local statics through AArch64 page and low-12-bit relocations against symbols
that the compiler addressed from a section anchor."""

import pytest
from harness import DiffPatch, Project, hotpatch

pytestmark = pytest.mark.arm64

SERVICE = Project("project", "service")
FIX = DiffPatch("diffs/project-fix.patch", SERVICE)


def test_fix_from_a_diff(build, spawn):
    t = spawn(build(SERVICE))
    assert t.ask("greet bob") == "hello, bob (greeting 1)" and t.ask("ok 50") == "1"
    assert t.ask("seven") == "21" and t.ask("ticket") == "1"
    r = hotpatch(str(t.pid), build(FIX))
    assert r.returncode == 0, r.stderr
    assert t.ask("greet bob") == "hi, bob (greeting 2)"      # greet.c's own counter, bound in place
    assert t.ask("ok 50") == "0" and t.ask("ok 5") == "1" and t.ask("calls") == "3"
    assert t.ask("scaled 2") == "10" and t.ask("seven") == "28" and t.ask("ticket") == "2"
    r = hotpatch("revert", str(t.pid))
    assert r.returncode == 0, r.stderr
    assert t.ask("greet bob") == "hello, bob (greeting 3)" and t.ask("ok 50") == "1"
