"""perf names patch code: apply writes /tmp/perf-PID.map with each replacing function, revert removes it;
a file hotpatch did not write, or a link, is left alone."""

import json
import os

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def test_perf_map_follows_the_patches(build, spawn, tmp_path):
    t = spawn(build(TARGET))
    path = f"/tmp/perf-{t.pid}.map"
    try:
        r = hotpatch(str(t.pid), build(FIX), "--json")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        lines = open(path).read().splitlines()
        assert lines[0] == "0 0 [hotpatch]"
        assert os.stat(path).st_mode & 0o777 == 0o644   # perf, run by another user, reads it
        entries = {line.split()[2]: (int(line.split()[0], 16), int(line.split()[1], 16)) for line in lines[1:]}
        assert set(entries) == {"compute", "fact", "version"}
        for f in report["functions"]:
            start, size = entries[f["name"]]
            assert start == int(f["new"], 16) and size > 0
        assert hotpatch("revert", str(t.pid)).returncode == 0
        assert not os.path.exists(path)

        with open(path, "w") as f:                     # someone else's map (a JIT's)
            f.write("1000 10 jitted\n")
        r = hotpatch(str(t.pid), build(FIX))
        assert r.returncode == 0 and "left alone" in r.stderr
        assert open(path).read() == "1000 10 jitted\n"
        assert hotpatch("revert", str(t.pid)).returncode == 0
        os.unlink(path)

        precious = tmp_path / "precious"
        precious.write_text("root's file\n")
        os.symlink(precious, path)                       # a planted link
        r = hotpatch(str(t.pid), build(FIX))
        assert r.returncode == 0 and "left alone" in r.stderr
        assert os.path.islink(path) and precious.read_text() == "root's file\n"
    finally:
        if os.path.lexists(path):
            os.unlink(path)
