"""Seccomp-filtered targets: a filter forbidding mmap is refused before anything is
written (exit 5, one line naming seccomp and the call); an unrelated filter is patched."""

import os
import subprocess

from conftest import FIXTURES, hotpatch


def build(tmp_path, name):
    out = str(tmp_path / name)
    subprocess.run(["gcc", "-O2", "-o", out, os.path.join(FIXTURES, name + ".c")], check=True)
    return out


def test_filter_forbidding_mmap_refused(tmp_path, spawn, cc):
    binary = build(tmp_path, "seccomp_deny_mmap")
    patch = cc.patch("patch_work.c", binary)
    t = spawn(binary)
    maps = t.maps()
    r = hotpatch(str(t.pid), patch)
    assert r.returncode == 5, r.stderr
    assert r.stderr.count("\n") == 1 and "seccomp" in r.stderr and "mmap" in r.stderr
    assert t.alive() and t.maps() == maps
    assert t.ask("work 1").strip() != ""


def test_unrelated_filter_patched(tmp_path, spawn, cc):
    binary = build(tmp_path, "seccomp_allow")
    patch = cc.patch("patch_work.c", binary)
    t = spawn(binary)
    before = t.ask("work 1")
    r = hotpatch(str(t.pid), patch)
    assert r.returncode == 0, r.stderr
    assert t.ask("work 1") == "1001" != before
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("work 1") == before
