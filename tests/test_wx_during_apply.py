"""No mapping is ever writable and executable at once: the target's maps are read
while apply is held at each step (HOTPATCH_PAUSE_AT), and after."""

import subprocess
import sys

from conftest import ROOT, assert_no_wx

STEPS = ["mapped", "filled", "stopped", "checked", "first-switched", "switched"]


def test_never_wx(cc, spawn):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn(binary)
    seen = 0
    for step in STEPS:
        p = subprocess.Popen([sys.executable, "-m", "hotpatch", str(t.pid), patch],
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=ROOT, env={"HOTPATCH_PAUSE_AT": f"apply:{step}",
                                                       "PATH": "/usr/bin:/bin"})
        assert p.stderr.readline().strip() == f"hotpatch: paused at apply:{step}"
        maps = t.maps()
        assert_no_wx(maps)
        seen += len(maps.splitlines())
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=60) == 0
        assert_no_wx(t.maps())
        assert t.ask("compute 5") == "51"
        assert subprocess.run([sys.executable, "-m", "hotpatch", "revert", str(t.pid)], cwd=ROOT,
                              capture_output=True).returncode == 0
        assert t.ask("compute 5") == "11"
    assert seen > 0
