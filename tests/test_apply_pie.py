"""The main scenario on a PIE target, every step through a fresh CLI process:
static data and function of the target, new data and string literals, a libc
call, recursion, a function pointer taken before the patch, three functions
switched together; list; revert restores the original bytes exactly."""

import json

from conftest import assert_no_wx, hotpatch, image_of, mappings_in

FUNCTIONS = ("compute", "fact", "version")


def check_unpatched(t):
    assert t.ask("compute 5") == "11"
    assert t.ask("fact 4") == "24"
    assert t.ask("version") == "v1"
    assert t.ask("ptr 5") == "11"


def test_apply_list_revert_pie(cc, spawn):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn(binary)
    check_unpatched(t)
    assert t.ask("inc") == "42"          # the target's own state, kept across the patch
    original = {f: t.read_mem(t.symbol_address(binary, f), 16) for f in FUNCTIONS}

    r = hotpatch(str(t.pid), patch, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["status"] == "applied" and report["id"] == 1
    assert {f["name"] for f in report["functions"]} == set(FUNCTIONS)
    assert all(f["jump"] == "near" for f in report["functions"])

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
    for f in FUNCTIONS:
        assert t.read_mem(t.symbol_address(binary, f), 16) == original[f], f
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


def test_stacked_patches_revert_in_order(cc, spawn):
    binary = cc.program("target.c", "-fPIE", "-pie")
    first = cc.patch("patch_target.c", binary)
    second = cc.patch("patch_target2.c", binary)
    t = spawn(binary)
    entry = t.symbol_address(binary, "compute")
    original = t.read_mem(entry, 16)
    r = hotpatch(str(t.pid), first, "--json")
    assert r.returncode == 0, r.stderr
    image1 = image_of(json.loads(r.stdout))
    r = hotpatch(str(t.pid), first)
    assert r.returncode == 4 and "already applied" in r.stderr
    assert hotpatch(str(t.pid), second).returncode == 0
    assert t.ask("compute 5") == "1000"
    assert t.ask("version") == "v2-patched-calls=0"     # patch 1 still active for version()

    r = hotpatch("revert", str(t.pid), "1")
    assert r.returncode == 2 and "revert patch 2 first" in r.stderr
    assert hotpatch("revert", str(t.pid)).returncode == 0      # newest: patch 2
    assert t.ask("compute 5") == "51"
    assert hotpatch("revert", str(t.pid), "--all").returncode == 0
    assert t.ask("compute 5") == "11"
    assert t.read_mem(entry, 16) == original
    assert mappings_in(t.maps(), *image1) == []


def test_revert_refuses_a_jump_changed_by_someone_else(cc, spawn):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn(binary)
    assert hotpatch(str(t.pid), patch).returncode == 0
    entry = t.symbol_address(binary, "fact")
    with open(f"/proc/{t.pid}/mem", "r+b") as mem:   # another tool rewrites fact's jump
        mem.seek(entry)
        mem.write(bytes.fromhex("b801000000"))      # mov $1, %eax (what -O2 fact starts with)
    compute = t.symbol_address(binary, "compute")
    patched = t.read_mem(compute, 16)
    r = hotpatch("revert", str(t.pid))
    assert r.returncode == 4 and "fact" in r.stderr and "modified" in r.stderr, r.stderr
    assert t.read_mem(compute, 16) == patched      # nothing restored: the patch stands as it was
    assert t.ask("compute 5") == "51"
