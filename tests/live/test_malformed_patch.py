"""A damaged patch file is refused with exit 6 and one line, before the process is touched."""

import os

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def mangled(good: bytes, how: str) -> bytes:
    if how == "garbage":
        return os.urandom(4096)
    if how == "truncated":
        return good[:len(good) // 2]
    if how == "flipped":
        data = bytearray(good)
        data[len(data) // 2] ^= 0x40
        return bytes(data)
    return b""


@pytest.mark.parametrize("mangle", ["garbage", "truncated", "flipped", "empty", "missing"])
def test_malformed_patch_files(build, spawn, tmp_path, mangle):
    binary = build(TARGET)
    with open(build(FIX), "rb") as f:
        good = f.read()
    bad = tmp_path / "bad.hp"
    if mangle != "missing":
        bad.write_bytes(mangled(good, mangle))
    t = spawn(binary)
    maps = t.maps()
    r = hotpatch(str(t.pid), str(bad))
    assert r.returncode == 6, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("hotpatch: "), r.stderr
    assert t.maps() == maps
    assert t.status("TracerPid") == "0"
    assert t.ask("compute 5") == "11"
    assert hotpatch("info", str(bad)).returncode == 6
