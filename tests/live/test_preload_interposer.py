"""Symbols bind as the loader binds them: a process started with an LD_PRELOAD malloc interposer (as jemalloc
or tcmalloc are used) gets the patch's malloc() and free() from the interposer, not from libc, which lies
after it in the loader's order but before it in address order. A block the patch allocates is freed by the
program, and the reverse; bound to libc's, the interposer is handed a block it never made (exit 86)."""

import json
import os

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

INTERPOSER = Program("interposer.c", "-shared", "-fPIC")
TARGET = Program("alloc.c")
FIX = Patch("patch_alloc.c", TARGET)


def test_patch_allocates_from_the_interposer(build, spawn):
    t = spawn(build(TARGET), env={"LD_PRELOAD": build(INTERPOSER)})
    assert t.ask("make 4") == "a" and t.ask("drop") == "d"
    r = hotpatch(str(t.pid), build(FIX), "--json")
    assert r.returncode == 0, r.stderr
    assert t.ask("make 4") == "b"      # allocated by the patch, freed by the program: the interposer's both
    assert t.ask("drop") == "e"        # allocated by the program, freed by the patch
    assert t.ask("make 2") == "b" and t.alive()


def test_info_resolve_says_where_and_why(build, spawn):
    t = spawn(build(TARGET), env={"LD_PRELOAD": build(INTERPOSER)})
    r = hotpatch("info", "--resolve", str(t.pid), build(FIX), "--json")
    assert r.returncode == 0, r.stderr
    rows = {b["name"]: b for b in json.loads(r.stdout)["bindings"]}
    assert rows["malloc"]["module"] == build(INTERPOSER) and "preloaded" in rows["malloc"]["why"]
    assert rows["free"]["module"] == build(INTERPOSER)
    assert "libc" in rows["memset"]["module"] and "needed" in rows["memset"]["why"]
    assert t.status("TracerPid") == "0"        # read only: never attached


JEMALLOC = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")


def test_with_debians_jemalloc(build, spawn):
    """The real thing: Debian's jemalloc preloaded (.ci/run installs libjemalloc2). Bound to glibc's
    malloc, the patch's blocks would reach jemalloc's free() (and the reverse), which corrupts its heap."""
    lib = next((p for p in JEMALLOC if os.path.exists(p)), None)
    if lib is None:
        pytest.skip("libjemalloc2 is not installed")
    t = spawn(build(TARGET), env={"LD_PRELOAD": lib})
    assert "libjemalloc" in open(f"/proc/{t.pid}/maps").read()
    r = hotpatch(str(t.pid), build(FIX))
    assert r.returncode == 0, r.stderr
    r = hotpatch("info", "--resolve", str(t.pid), build(FIX), "--json")
    rows = {b["name"]: b for b in json.loads(r.stdout)["bindings"]}
    assert "libjemalloc" in rows["malloc"]["module"] and "libjemalloc" in rows["free"]["module"], rows
    for n in range(200):                               # enough to go through jemalloc's caches
        assert t.ask(f"make {n % 64 + 1}") == "b"
        assert t.ask("drop") == "e"
    assert t.alive()
