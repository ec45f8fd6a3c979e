"""A patch using thread-local variables: the executable's own and a needed library's (static TLS) and a
dlopen()ed library's own (dynamic TLS), each through __tls_get_addr with the module id the loader gave
that object (1 for the executable; a library's read from the GOT slot the loader filled for its own TLS
accesses) and the variable's offset: per thread, as the program's own code sees them. x86-64 (AArch64
code uses TLS descriptors, which a patch cannot fill without running the loader's code)."""

import os

import pytest
from harness import compile_c, compiler_for, host_only, hotpatch

pytestmark = host_only("x86-64 TLS (general dynamic); the libraries are linked by the test itself")
CC = compiler_for("x86_64")


@pytest.fixture
def programs(tmp_path):
    if CC is None:
        pytest.skip("no x86-64 compiler")
    d = str(tmp_path)
    compile_c(os.path.join(d, "libtlslib.so"), ["tls_lib.c"], ["-shared", "-fPIC"], CC)
    plugin = compile_c(os.path.join(d, "tls_plugin.so"), ["tls_plugin.c"], ["-shared", "-fPIC"], CC)
    exe = compile_c(os.path.join(d, "tls_main"), ["tls_main.c"], [f"-L{d}", f"-Wl,-rpath,{d}", "-ltlslib", "-ldl"],
                    CC)
    return exe, plugin, tmp_path


def build(tmp_path, source: str, target: str) -> str:
    out = str(tmp_path / (os.path.splitext(source)[0] + ".hp"))
    r = hotpatch("build", os.path.join("fixtures", source), "--target", target, "-o", out)
    assert r.returncode == 0, r.stderr
    return out


def test_thread_local_variables(programs, spawn):
    exe, plugin, tmp_path = programs
    report_fix = build(tmp_path, "patch_tls_report.c", exe)
    plugin_fix = build(tmp_path, "patch_tls_plugin.c", plugin)
    t = spawn([exe, plugin])
    assert t.ask("report") == "1 1" and t.ask("report") == "2 2" and t.ask("plug") == "1"
    r = hotpatch(str(t.pid), report_fix)
    assert r.returncode == 0, r.stderr
    assert t.ask("report") == "12 102"          # this thread's copies, where the program left them
    assert t.ask("thread") == "10 100"          # a new thread: its own copies, from zero
    assert t.ask("report") == "22 202"
    r = hotpatch(str(t.pid), plugin_fix)
    assert r.returncode == 0, r.stderr
    assert t.ask("plug") == "1001"              # the dlopen()ed library's dynamic TLS
    assert hotpatch("revert", "--all", str(t.pid)).returncode == 0
    assert t.ask("report") == "23 203" and t.ask("plug") == "1002"
