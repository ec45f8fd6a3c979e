"""A record altered in the process (a memory-corruption bug, or the process itself: mprotect and write)
no longer matches its authentication code: revert and gc refuse to act on it, list shows it unverifiable.
(With structural checks only, revert wrote the altered "saved" bytes, here int3s, into compute's entry.)"""

import json

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def test_altered_record_is_not_acted_on(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    r = hotpatch(str(t.pid), build(FIX), "--json")
    assert r.returncode == 0, r.stderr
    base = int(json.loads(r.stdout)["image"]["base"], 16)
    header = t.read_mem(base, 4096)
    length = int.from_bytes(header[48:52], "little")   # records.LENGTH_OFFSET: the JSON's length
    saved = json.loads(header[64:64 + length])["functions"][0]["saved"]
    at = header.index(f'"saved": "{saved}"'.encode()) + len('"saved": "')
    t.write_mem(base + at, b"cc" * (len(saved) // 2))   # the same length: structurally still a record
    entry = t.symbol_address(binary, "compute")
    code = t.read_mem(entry, 16)
    r = hotpatch("revert", str(t.pid))
    assert r.returncode == 4 and "authentication code" in r.stderr, r.stderr
    assert t.read_mem(entry, 16) == code and t.ask("compute 5") == "51"
    listed = json.loads(hotpatch("list", str(t.pid), "--json").stdout)["patches"]
    assert [(p["id"], p["status"]) for p in listed] == [(1, "unverifiable")]
    assert hotpatch("gc", str(t.pid)).returncode == 0 and t.read_mem(entry, 16) == code
