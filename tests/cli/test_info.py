"""hotpatch info: what a patch replaces and binds to, as JSON and as text."""

import json

from harness import Patch, Program, hotpatch

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def test_info(build):
    patch = build(FIX)
    r = hotpatch("info", patch, "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)["meta"]
    assert sorted(f["name"] for f in meta["replace"]) == ["compute", "fact", "version"]
    assert sorted(meta["target_symbols"]) == ["counter", "helper"]
    assert "snprintf" in meta["external"]
    r = hotpatch("info", patch)
    assert r.returncode == 0, r.stderr
    assert "replaces:" in r.stdout and "compute" in r.stdout
