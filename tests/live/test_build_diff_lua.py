"""Real software: Lua 5.4.4 from Debian's source package, built with its own Makefile, runs a line service
(fixtures/lua_driver.lua); Debian's fix for CVE-2022-28805 (upstream commit "Lua can generate wrong code
when _ENV is <const>", debian/patches/0004-cve-2022-28805.patch) is made into a patch by `build --diff`
and applied to the running interpreter: code compiled after it is right, before it is wrong. The fix for
CVE-2022-33099 (ldebug.c and lvm.c, where gcc split luaV_concat into a .part clone) goes in with it."""

import os
import shutil
import subprocess

import pytest
from harness import ROOT, debian_source, host_only, hotpatch, unpack

pytestmark = host_only("build --diff builds Lua with its Makefile (the guest has no compiler)")

DRIVER = os.path.join(ROOT, "fixtures", "lua_driver.lua")
WRONG = "local _ENV <const> = 1; return x"   # _ENV a compile-time constant: the parser's case the fix is for


@pytest.fixture(scope="module")
def lua(tmp_path_factory):
    try:
        upstream, debian = debian_source("lua5.4")
    except RuntimeError as e:
        pytest.skip(str(e))
    work = tmp_path_factory.mktemp("lua")
    src = unpack(upstream, str(work / "src"))
    unpack(debian, str(work / "debian"))
    built = str(work / "built")
    shutil.copytree(src, built)
    subprocess.run(["make", "-s", "linux"], cwd=built, check=True, capture_output=True)
    patches = os.path.join(str(work / "debian"), "patches")
    return src, os.path.join(built, "src", "lua"), patches


def test_cve_2022_28805_fixed_in_a_running_interpreter(lua, spawn, tmp_path):
    src, binary, patches = lua
    out = str(tmp_path / "cve.hp")
    r = hotpatch("build", "--diff", os.path.join(patches, "0004-cve-2022-28805.patch"),
                 "--diff", os.path.join(patches, "0005-cve-2022-33099.patch"),
                 "--source", src, "--target", binary, "--build", "make linux", "-o", out, timeout=600)
    assert r.returncode == 0, r.stderr
    for function in ("singlevar", "luaG_runerror", "luaV_concat.part.0"):
        assert function in r.stdout, r.stdout
    t = spawn([binary, DRIVER])
    assert "needs too many registers" in t.ask(WRONG)        # the bug: wrong code generated
    assert t.ask("return 1 + 2") == "3"
    r = hotpatch(str(t.pid), out)
    assert r.returncode == 0, r.stderr
    assert t.ask(WRONG).endswith("attempt to index a number value")   # right code, its runtime error
    assert t.ask('local _ENV <const> = "abc"; return len').startswith("function: ")   # string methods
    assert t.ask('return ("ab"):rep(3) .. "c" .. 1') == "abababc1"     # luaV_concat, replaced
    assert t.ask('return pcall(error, "x")') == "false"
    r = hotpatch("revert", str(t.pid))
    assert r.returncode == 0, r.stderr
    assert "needs too many registers" in t.ask(WRONG)
