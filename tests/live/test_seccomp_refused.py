"""A process whose seccomp filter forbids mmap is refused before anything is written
(exit 5, one line naming seccomp and the call): it lives on, unchanged, old code answering."""

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("seccomp_deny_mmap.c")
FIX = Patch("patch_work.c", TARGET)


def test_filter_forbidding_mmap_refused(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    entry = t.symbol_address(binary, "work")
    code, maps = t.read_mem(entry, 32), t.maps()
    assert t.ask("work 1") == "89"
    r = hotpatch(str(t.pid), build(FIX))
    assert r.returncode == 5, r.stderr
    assert r.stderr.count("\n") == 1 and "seccomp" in r.stderr and "mmap" in r.stderr
    assert t.alive() and t.maps() == maps
    assert t.ask("work 1") == "89"           # the old work(): (1 * 3 + 0) ^ 0x5a
    assert t.read_mem(entry, 32) == code
    assert t.status("TracerPid") == "0"
