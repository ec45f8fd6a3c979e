"""Stripped targets: static symbols from a debug file found by build-id, or exported ones from .dynsym."""

import os
import shutil
import subprocess

from elftools.elf.elffile import ELFFile

from conftest import hotpatch


def build_id(path):
    with open(path, "rb") as f:
        note = ELFFile(f).get_section_by_name(".note.gnu.build-id")
        return next(note.iter_notes())["n_desc"]


def test_stripped_with_debug_file(cc, spawn, tmp_path):
    full = cc.program("target.c", "-fPIE", "-pie")
    binary = str(tmp_path / "target-stripped")
    shutil.copy(full, binary)
    bid = build_id(binary)
    debug_root = tmp_path / "debug"
    debug = debug_root / ".build-id" / bid[:2] / (bid[2:] + ".debug")
    debug.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", binary, str(debug)], check=True)
    subprocess.run(["strip", binary], check=True)
    env = {"HOTPATCH_DEBUG_DIRS": str(debug_root)}

    out = str(tmp_path / "fix.hp")
    src = os.path.join(os.path.dirname(__file__), "..", "fixtures", "patch_target.c")
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


def test_stripped_dynsym_only(cc, spawn, tmp_path):
    full = cc.program("target.c", "-fPIE", "-pie", "-rdynamic")
    binary = str(tmp_path / "target-dynsym")
    shutil.copy(full, binary)
    subprocess.run(["strip", binary], check=True)
    out = str(tmp_path / "fix.hp")
    src = os.path.join(os.path.dirname(__file__), "..", "fixtures", "patch_target2.c")
    # patch_target2 calls the static helper: not exported, so it must be refused clearly...
    r = hotpatch("build", src, "--target", binary, "-o", out)
    assert r.returncode == 6 and "helper" in r.stderr and "\n" == r.stderr[-1]
    # ...while a patch using only exported names works.
    src2 = tmp_path / "fix2.c"
    src2.write_text("extern int fact(int);\nint compute(int x) { return fact(x) + 7; }\n")
    r = hotpatch("build", str(src2), "--target", binary, "-o", out)
    assert r.returncode == 0, r.stderr
    t = spawn(binary)
    r = hotpatch(str(t.pid), out)
    assert r.returncode == 0, r.stderr
    assert t.ask("compute 4") == "31"
