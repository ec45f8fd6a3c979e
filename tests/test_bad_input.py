"""Bad input gets one clear line and a documented exit code, and harms nothing."""

import json
import os
import subprocess

import pytest

from conftest import FIXTURES, hotpatch


def one_line(r):
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("hotpatch: "), r.stderr
    return r.stderr


def test_usage_errors():
    assert hotpatch().returncode == 2
    r = hotpatch("frobnicate")
    assert r.returncode == 2
    one_line(r)
    r = hotpatch("apply", "notapid", "x.hp")
    assert r.returncode == 2
    one_line(r)
    r = hotpatch("--version")
    assert r.returncode == 0 and r.stdout.startswith("hotpatch ")
    r = hotpatch("-h")
    assert r.returncode == 0 and "exit codes:" in r.stdout and "process busy" in r.stdout


def test_missing_process(cc):
    patch = cc.patch("patch_target.c", cc.program("target.c", "-fPIE", "-pie"))
    r = hotpatch("4194000", patch)
    assert r.returncode == 5
    assert "does not exist" in one_line(r)
    r = hotpatch("list", "4194000", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 5 and out["exit_code"] == 5 and out["status"] == "error"


@pytest.mark.parametrize("mangle", ["garbage", "truncated", "flipped", "empty", "missing"])
def test_malformed_patch_files(cc, spawn, tmp_path, mangle):
    binary = cc.program("target.c", "-fPIE", "-pie")
    good = open(cc.patch("patch_target.c", binary), "rb").read()
    bad = tmp_path / "bad.hp"
    if mangle == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif mangle == "truncated":
        bad.write_bytes(good[:len(good) // 2])
    elif mangle == "flipped":
        data = bytearray(good)
        data[len(data) // 2] ^= 0x40
        bad.write_bytes(bytes(data))
    elif mangle == "empty":
        bad.write_bytes(b"")
    t = spawn(binary)
    maps = t.maps()
    r = hotpatch(str(t.pid), str(bad))
    assert r.returncode == 6, r.stderr
    one_line(r)
    assert t.maps() == maps
    assert t.ask("compute 5") == "11"
    assert hotpatch("info", str(bad)).returncode == 6


def test_info(cc):
    patch = cc.patch("patch_target.c", cc.program("target.c", "-fPIE", "-pie"))
    r = hotpatch("info", patch, "--json")
    assert r.returncode == 0
    meta = json.loads(r.stdout)["meta"]
    assert sorted(f["name"] for f in meta["replace"]) == ["compute", "fact", "version"]
    assert sorted(meta["target_symbols"]) == ["counter", "helper"]
    assert "snprintf" in meta["external"]
    r = hotpatch("info", patch)
    assert "replaces:" in r.stdout and "compute" in r.stdout


def test_build_errors(cc, tmp_path):
    binary = cc.program("target.c", "-fPIE", "-pie")
    out = str(tmp_path / "x.hp")
    src = tmp_path / "broken.c"
    src.write_text("int compute(int x) { return x +; }\n")
    r = hotpatch("build", str(src), "--target", binary, "-o", out)
    assert r.returncode == 6 and "error" in r.stderr and "compiling" in r.stderr.splitlines()[-1]

    src.write_text("extern int no_such_thing(int);\nint compute(int x) { return no_such_thing(x); }\n")
    r = hotpatch("build", str(src), "--target", binary, "-o", out)
    assert r.returncode == 6 and "no_such_thing is defined neither in" in one_line(r)

    src.write_text("__thread int tls_var;\nint compute(int x) { return tls_var += x; }\n")
    r = hotpatch("build", str(src), "--target", binary, "-o", out)
    assert r.returncode == 6 and "thread-local" in one_line(r)

    src.write_text("int unrelated(int x) { return x; }\n")
    r = hotpatch("build", str(src), "--target", binary, "-o", out)
    assert r.returncode == 6 and "replaces no function" in one_line(r)
    assert not os.path.exists(out)

    r = hotpatch("build", str(src), "--target", "/nonexistent", "-o", out)
    assert r.returncode == 2
    one_line(r)


def test_ambiguous_static_symbol(tmp_path, spawn):
    binary = str(tmp_path / "ambig")
    subprocess.run(["gcc", "-O2", "-o", binary, os.path.join(FIXTURES, "ambig_a.c"),
                    os.path.join(FIXTURES, "ambig_b.c")], check=True)
    out = str(tmp_path / "p.hp")
    src = os.path.join(FIXTURES, "patch_ambig.c")
    r = hotpatch("build", src, "--target", binary, "-o", out)
    assert r.returncode == 6
    line = one_line(r)
    assert "limit is ambiguous" in line and "ambig_a.c" in line and "ambig_b.c" in line and "--pick" in line
    r = hotpatch("build", src, "--target", binary, "-o", out, "--pick", "limit=ambig_b.c")
    assert r.returncode == 0, r.stderr
    t = spawn(binary)
    assert t.ask("x 50") == "0 1"
    assert hotpatch(str(t.pid), out).returncode == 0
    assert t.ask("x 50") == "1 1"       # 50 < 2 * ambig_b.c's limit (100)
