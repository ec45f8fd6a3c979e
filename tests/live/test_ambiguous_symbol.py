"""A static name defined in two files of the binary: build refuses it, naming both files and
--pick; with --pick the patch binds to the chosen one, which the live process then shows."""

import os

from harness import FIXTURES, Program, host_only, hotpatch

pytestmark = host_only("builds the patch at test time (its refusal is the scenario)")

TARGET = Program("ambig_a.c", "ambig_b.c")


def test_ambiguous_static_symbol(build, spawn, tmp_path):
    binary = build(TARGET)
    out = str(tmp_path / "p.hp")
    src = os.path.join(FIXTURES, "patch_ambig.c")
    r = hotpatch("build", src, "--target", binary, "-o", out)
    assert r.returncode == 6
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "limit is ambiguous" in r.stderr and "ambig_a.c" in r.stderr and "ambig_b.c" in r.stderr
    assert "--pick" in r.stderr
    assert not os.path.exists(out)
    r = hotpatch("build", src, "--target", binary, "-o", out, "--pick", "limit=ambig_b.c")
    assert r.returncode == 0, r.stderr
    t = spawn(binary)
    assert t.ask("x 50") == "0 1"
    assert hotpatch(str(t.pid), out).returncode == 0
    assert t.ask("x 50") == "1 1"       # 50 < 2 * ambig_b.c's limit (100)
