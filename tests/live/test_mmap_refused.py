"""A system call the kernel refuses in the process (mmap over its address-space limit) is exit 8, named,
and nothing is changed."""

import json
import resource

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def test_mmap_over_rlimit_as_is_exit_8(build, spawn):
    t = spawn(build(TARGET))
    entry = t.symbol_address(build(TARGET), "compute")
    code, maps = t.read_mem(entry, 32), t.maps()
    vm = int(t.status("VmSize").split()[0]) * 1024
    resource.prlimit(t.pid, resource.RLIMIT_AS, (vm, vm))   # no new mapping fits
    r = hotpatch(str(t.pid), build(FIX), "--json")
    assert r.returncode == 8, (r.returncode, r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["error"] == "syscall-refused" and "mmap" in out["message"] and "Cannot allocate" in out["message"]
    assert t.read_mem(entry, 32) == code and t.maps() == maps
    assert t.status("TracerPid") == "0" and t.ask("compute 5") == "11"
