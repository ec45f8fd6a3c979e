"""A stripped binary without a debug file: only its exported (.dynsym) names bind. A patch
calling a static function is refused clearly; one using exported names applies."""

import os
import shutil
import subprocess

from harness import FIXTURES, Program, host_only, hotpatch

pytestmark = host_only("strips the binary and builds the patch at test time")

TARGET = Program("target.c", "-fPIE", "-pie", "-rdynamic")


def test_stripped_dynsym_only(build, spawn, tmp_path):
    binary = str(tmp_path / "target-dynsym")
    shutil.copy(build(TARGET), binary)
    subprocess.run(["strip", binary], check=True)
    out = str(tmp_path / "fix.hp")
    # patch_target2 calls the static helper: not exported, so it must be refused clearly...
    r = hotpatch("build", os.path.join(FIXTURES, "patch_target2.c"), "--target", binary, "-o", out)
    assert r.returncode == 6 and "helper" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not os.path.exists(out)
    # ...while a patch using only exported names works.
    src = tmp_path / "fix2.c"
    src.write_text("extern int fact(int);\nint compute(int x) { return fact(x) + 7; }\n")
    r = hotpatch("build", str(src), "--target", binary, "-o", out)
    assert r.returncode == 0, r.stderr
    t = spawn(binary)
    assert t.ask("compute 4") == "9"
    r = hotpatch(str(t.pid), out)
    assert r.returncode == 0, r.stderr
    assert t.ask("compute 4") == "31"
