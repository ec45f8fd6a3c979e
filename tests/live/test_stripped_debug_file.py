"""A stripped binary: static symbols come from its debug file, found by build-id in
HOTPATCH_DEBUG_DIRS; without it, build says the binary is stripped."""

import os
import shutil
import subprocess

from elftools.elf.elffile import ELFFile
from harness import FIXTURES, Program, host_only, hotpatch

pytestmark = host_only("strips the binary and builds the patch at test time")

TARGET = Program("target.c", "-fPIE", "-pie")


def build_id(path):
    with open(path, "rb") as f:
        note = ELFFile(f).get_section_by_name(".note.gnu.build-id")
        return next(note.iter_notes())["n_desc"]


def test_stripped_with_debug_file(build, spawn, tmp_path):
    binary = str(tmp_path / "target-stripped")
    shutil.copy(build(TARGET), binary)
    bid = build_id(binary)
    debug_root = tmp_path / "debug"
    debug = debug_root / ".build-id" / bid[:2] / (bid[2:] + ".debug")
    debug.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", binary, str(debug)], check=True)
    subprocess.run(["strip", binary], check=True)
    env = {"HOTPATCH_DEBUG_DIRS": str(debug_root)}

    out = str(tmp_path / "fix.hp")
    src = os.path.join(FIXTURES, "patch_target.c")
    r = hotpatch("build", src, "--target", binary, "-o", out)
    assert r.returncode == 6 and "stripped" in r.stderr and str(debug_root) not in r.stderr
    r = hotpatch("build", src, "--target", binary, "-o", out, env=env)
    assert r.returncode == 0, r.stderr

    t = spawn(binary)
    assert t.ask("compute 5") == "11"
    r = hotpatch(str(t.pid), out)
    assert r.returncode == 0, r.stderr
    assert t.ask("inc") == "42"
    assert t.ask("compute 5") == "52"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("compute 5") == "11"
