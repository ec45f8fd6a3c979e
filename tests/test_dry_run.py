"""--dry-run checks everything (code, symbols, placement, activeness) and changes nothing."""

import json

from conftest import hotpatch


def test_dry_run_changes_nothing(cc, spawn):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn(binary)
    code, maps = t.read_mem(t.symbol_address(binary, "compute"), 32), t.maps()
    r = hotpatch(str(t.pid), patch, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["status"] == "dry-run" and {f["name"] for f in report["functions"]} == {"compute", "fact", "version"}
    assert t.read_mem(t.symbol_address(binary, "compute"), 32) == code and t.maps() == maps
    assert t.ask("compute 5") == "11"
    assert "no patches" in hotpatch("list", str(t.pid)).stdout
