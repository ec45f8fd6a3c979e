"""A process with 1,000 threads: patched and reverted with the full activeness check."""

import os

from harness import Program, host_only, hotpatch

pytestmark = host_only("builds its patch at test time")

TARGET = Program("probe_threads.c", "-fPIE", "-pie")


def test_thousand_threads(build, spawn, tmp_path):
    binary = build(TARGET)
    fix = tmp_path / "fix.c"
    fix.write_text("int work(int x) { return x * 3 + 2; }\n")
    patch = str(tmp_path / "fix.hp")
    r = hotpatch("build", str(fix), "--target", binary, "-o", patch)
    assert r.returncode == 0, r.stderr
    t = spawn([binary, "1000"])
    assert len(os.listdir(f"/proc/{t.pid}/task")) == 1000
    # "calls 1" answers the parity of work(0): 1 from 3*0+1, 0 from the patch's 3*0+2
    assert t.ask("calls 1").split()[1] == "1"
    r = hotpatch(str(t.pid), patch)
    assert r.returncode == 0, r.stderr
    assert t.ask("calls 1").split()[1] == "0"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("calls 1").split()[1] == "1"
    assert len(os.listdir(f"/proc/{t.pid}/task")) == 1000
