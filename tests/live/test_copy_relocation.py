"""A patch to a shared library reading the library's exported variable binds to the copy the executable
made of it (a copy relocation), as the library's own code does through its GOT, not to the library's
unused original: the value the program set is the one the patch reads."""

import os

import pytest
from harness import compile_c, compiler_for, host_only, hotpatch

pytestmark = host_only("the library and the program are linked by the test itself")
CC = compiler_for("x86_64")


def test_patch_reads_the_executables_copy(tmp_path, spawn):
    if CC is None:
        pytest.skip("no x86-64 compiler")
    d = str(tmp_path)
    lib = compile_c(os.path.join(d, "libcopy.so"), ["copy_lib.c"], ["-shared", "-fPIC", "-Wl,-soname,libcopy.so"], CC)
    exe = compile_c(os.path.join(d, "copy_main"), ["copy_main.c"], [f"-L{d}", f"-Wl,-rpath,{d}", "-lcopy"], CC)
    fix = str(tmp_path / "fix.hp")
    r = hotpatch("build", "fixtures/patch_copy_lib.c", "--target", lib, "-o", fix)
    assert r.returncode == 0, r.stderr
    t = spawn(exe)
    assert t.ask("set 7") == "ok" and t.ask("get") == "7"
    r = hotpatch(str(t.pid), fix)
    assert r.returncode == 0, r.stderr
    assert t.ask("get") == "1007"                      # the executable's copy, not the library's 5
    assert t.ask("set 9") == "ok" and t.ask("get") == "1009"
