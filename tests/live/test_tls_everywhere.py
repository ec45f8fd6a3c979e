"""Thread-local variables from a patch on both architectures: the executable's own (static TLS) and a
dlopen()ed library's own (dynamic TLS), per thread. x86-64: __tls_get_addr with the loader's module id;
AArch64: a TLS descriptor in the image, the loader's own for the library's variable (copied from its GOT),
and for the executable's the image's entry with the variable's offset from the thread pointer."""

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

PLUGIN = Program("tls_plugin.c", "-shared", "-fPIC")
HOST = Program("tls_exe.c", "-fno-ipa-ra", "-ldl")   # callers assume nothing of what mine() clobbers
EXE_FIX = Patch("patch_tls_exe.c", HOST)
PLUGIN_FIX = Patch("patch_tls_plugin.c", PLUGIN)


def test_tls_of_the_executable_and_a_dlopened_library(build, spawn):
    t = spawn([build(HOST), build(PLUGIN)])
    assert t.ask("mine") == "1" and t.ask("mine") == "2" and t.ask("plug") == "1"
    r = hotpatch(str(t.pid), build(EXE_FIX))
    assert r.returncode == 0, r.stderr
    assert t.ask("mine") == "12"            # this thread's copy, where the program left it
    assert t.ask("thread") == "10"          # a new thread's own copy, from zero
    r = hotpatch(str(t.pid), build(PLUGIN_FIX))
    assert r.returncode == 0, r.stderr
    assert t.ask("plug") == "1001" and t.ask("plug") == "2001"
    assert hotpatch("revert", "--all", str(t.pid)).returncode == 0
    assert t.ask("mine") == "13" and t.ask("plug") == "2002"
