"""--dry-run checks everything (code, symbols, placement, activeness) and changes nothing."""

import json

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def test_dry_run_changes_nothing(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    entry = t.symbol_address(binary, "compute")
    code, maps = t.read_mem(entry, 32), t.maps()
    r = hotpatch(str(t.pid), build(FIX), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["status"] == "dry-run"
    assert {f["name"] for f in report["functions"]} == {"compute", "fact", "version"}
    assert t.read_mem(entry, 32) == code and t.maps() == maps
    assert t.status("TracerPid") == "0"
    assert t.ask("compute 5") == "11"
    assert "no patches" in hotpatch("list", str(t.pid)).stdout
