"""A library exporting two versions of one function (answer@V1, answer@@V2): a patch's plain reference binds
to the default version, as the loader binds it; one given a version with .symver (`answer@V1`) binds to that
version, default or not."""

import os

import pytest
from harness import FIXTURES, compile_c, compiler_for, host_only, hotpatch

pytestmark = host_only("the library and the program are linked by the test itself")
CC = compiler_for("x86_64")


def test_both_versions(tmp_path, spawn):
    if CC is None:
        pytest.skip("no x86-64 compiler")
    d = str(tmp_path)
    compile_c(os.path.join(d, "libversioned.so"), ["versioned_lib.c"],
              ["-shared", "-fPIC", f"-Wl,--version-script={os.path.join(FIXTURES, 'versioned.map')}"], CC)
    exe = compile_c(os.path.join(d, "versioned_main"), ["versioned_main.c"],
                    [f"-L{d}", f"-Wl,-rpath,{d}", "-lversioned"], CC)
    fix = str(tmp_path / "fix.hp")
    r = hotpatch("build", "fixtures/patch_versioned.c", "--target", exe, "-o", fix)
    assert r.returncode == 0, r.stderr
    t = spawn(exe)
    assert t.ask("pick") == "2"                 # the program's call: the default version
    r = hotpatch(str(t.pid), fix)
    assert r.returncode == 0, r.stderr
    assert t.ask("pick") == "12"                # answer@V1 * 10 + answer@@V2
