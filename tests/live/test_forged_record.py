"""A record the process forged is never acted on: root's revert refuses it (exit 4, naming why) and writes
nothing; list shows it as unverifiable. (Before: revert wrote the bytes the process chose into its own
r-x code.)"""

import json

import pytest
from harness import Program, hotpatch

pytestmark = pytest.mark.arm64

FORGER = Program("forge.c")


def test_forged_record_is_refused(build, spawn):
    binary = build(FORGER)
    t = spawn(binary)
    entry = t.symbol_address(binary, "victim")
    code = t.read_mem(entry, 16)
    assert t.ask("victim 3") == "4"
    r = hotpatch("revert", str(t.pid))
    assert r.returncode == 4 and "fails verification" in r.stderr, r.stderr
    assert t.read_mem(entry, 16) == code and t.ask("victim 3") == "4"
    listed = json.loads(hotpatch("list", str(t.pid), "--json").stdout)["patches"]
    assert [(p["id"], p["status"]) for p in listed] == [(1, "unverifiable")]
    assert "outside the code of the module" in listed[0]["unverifiable"] or "jump" in listed[0]["unverifiable"]
    assert t.status("TracerPid") == "0"
