"""The image's mappings carry the name `[anon:hotpatch:...]` exactly where the kernel names anonymous
mappings (CONFIG_ANON_VMA_NAME): hotpatch asks the kernel once, on a page of its own, instead of making a
remote prctl in every process that a kernel without it is bound to refuse. The kernel's answer is read
here from what /proc/self/maps shows for a page this test names, not from hotpatch's probe."""

import ctypes
import json
import mmap

import pytest
from harness import Patch, Program, hotpatch

from hotpatch.linux import PR_SET_VMA, PR_SET_VMA_ANON_NAME

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def kernel_shows_names() -> bool:
    page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    anchor = ctypes.c_char.from_buffer(page)
    try:
        address = ctypes.addressof(anchor)
        ctypes.CDLL(None).prctl(ctypes.c_int(PR_SET_VMA), ctypes.c_ulong(PR_SET_VMA_ANON_NAME),
                                ctypes.c_ulong(address), ctypes.c_ulong(mmap.PAGESIZE),
                                ctypes.c_char_p(b"hotpatch-test"))
        with open("/proc/self/maps") as f:
            line = next(line for line in f if int(line.split("-")[0], 16) == address)
        return line.rstrip().endswith("[anon:hotpatch-test]")
    finally:
        del anchor
        page.close()


def test_image_named_where_the_kernel_names_mappings(build, spawn):
    t = spawn(build(TARGET))
    r = hotpatch(str(t.pid), build(FIX), "--json")
    assert r.returncode == 0, r.stderr
    assert t.ask("compute 5") == "51"
    new = int(json.loads(r.stdout)["functions"][0]["new"], 16)
    line = next(line for line in t.maps().splitlines()
                if int(line.split()[0].split("-")[0], 16) <= new < int(line.split()[0].split("-")[1], 16))
    assert line.split()[1] == "r-xp", line
    assert ("[anon:hotpatch:" in line) == kernel_shows_names(), line
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("compute 5") == "11"
