"""The main scenario on a PIE target, every step through a fresh CLI process:
static data and function of the target, new data and string literals, a libc
call, recursion, a function pointer taken before the patch, three functions
switched together; list; revert restores the original bytes exactly."""

import json

import pytest
from harness import ARCH, Patch, Program, assert_no_wx, decode_jump, hotpatch, image_of, mappings_in, new_address

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)
FUNCTIONS = ("compute", "fact", "version")


def test_apply_list_revert_pie(build, spawn):
    binary, patch = build(TARGET), build(FIX)
    t = spawn(binary)
    assert t.ask("compute 5") == "11"
    assert t.ask("fact 4") == "24"
    assert t.ask("version") == "v1"
    assert t.ask("ptr 5") == "11"
    assert t.ask("inc") == "42"          # the target's own state, kept across the patch
    entries = {f: t.symbol_address(binary, f) for f in FUNCTIONS}
    original = {f: t.read_mem(a, 32) for f, a in entries.items()}

    r = hotpatch(str(t.pid), patch, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["status"] == "applied" and report["id"] == 1
    assert {f["name"] for f in report["functions"]} == set(FUNCTIONS)
    assert all(f["jump"] == "near" for f in report["functions"])
    for f, a in entries.items():        # each entry now jumps to its new version, in the image
        assert decode_jump(ARCH, t.read_mem(a, 16), a) == ("near", new_address(report, f)), f

    assert t.ask("compute 5") == "52"          # helper(5) + counter (42): static data and function
    assert t.ask("ptr 5") == "52"              # through a pointer taken before the patch
    assert t.ask("fact 4") == "24000"          # recursion reaches the new fact: 4*3*2*1000
    assert t.ask("version") == "v2-patched-calls=2"   # new data, literals, snprintf from libc
    assert t.ask("inc") == "43"
    assert t.ask("compute 1") == "45"          # the patch sees the target's counter change

    maps = t.maps()
    assert_no_wx(maps)
    parts = mappings_in(maps, *image_of(report))
    assert [p.split()[1] for p in parts] == ["r--p", "r-xp", "rw-p"], parts

    r = hotpatch("list", str(t.pid), "--json")
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)["patches"]
    assert [(p["id"], p["status"]) for p in listing] == [(1, "active")]
    assert {f["name"] for f in listing[0]["functions"]} == set(FUNCTIONS)

    r = hotpatch("revert", str(t.pid))
    assert r.returncode == 0, r.stderr
    assert "reverted patch 1" in r.stdout
    assert {f: t.read_mem(a, 32) for f, a in entries.items()} == original
    assert mappings_in(t.maps(), *image_of(report)) == []
    assert t.ask("compute 5") == "11"
    assert t.ask("fact 4") == "24"
    assert t.ask("version") == "v1"
    assert t.ask("ptr 5") == "11"
    assert t.ask("inc") == "44"

    r = hotpatch("list", str(t.pid))
    assert r.returncode == 0 and "no patches" in r.stdout
    r = hotpatch("revert", str(t.pid))
    assert r.returncode == 2 and "no patch is applied" in r.stderr
