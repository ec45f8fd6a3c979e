"""`apply --all-processes`: every process mapping the patch's binary (by build-id), each in its own
transaction, concurrently; one that is busy or already patched does not stop the others; a process of
another binary is left alone. Exit 0 when all are patched, 10 when some are not, with the reason each."""

import json
import shutil

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
OTHER = Program("target.c", "-fPIE", "-pie", "-O1")   # same source, another build (another build-id)
FIX = Patch("patch_target.c", TARGET)


def test_every_process_of_the_binary(build, spawn):
    ts = [spawn(build(TARGET)) for _ in range(5)]
    other = spawn(build(OTHER))
    assert hotpatch(str(ts[0].pid), build(FIX)).returncode == 0      # one has it already
    r = hotpatch("apply", "--all-processes", build(FIX), "--jobs", "3", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    outcomes = {p["pid"]: p["outcome"] for p in report["processes"]}
    assert outcomes == {ts[0].pid: "already patched", **{t.pid: "patched" for t in ts[1:]}}, outcomes
    assert all(t.ask("compute 5") == "51" for t in ts)
    assert other.ask("compute 5") == "11" and other.status("TracerPid") == "0"
    r = hotpatch("apply", "--all-processes", build(FIX))
    assert r.returncode == 0 and "5 already patched" in r.stdout, r.stdout + r.stderr


def test_some_not_patched_exit_10(build, spawn, tmp_path):
    """One process whose code someone else changed is refused (its reason given); the others are patched."""
    good, changed = spawn(build(TARGET)), spawn(build(TARGET))
    entry = changed.symbol_address(build(TARGET), "compute")
    with open(f"/proc/{changed.pid}/mem", "r+b") as mem:   # a debugger's breakpoint, say
        mem.seek(entry + 1)
        mem.write(b"\xcc")
    r = hotpatch("apply", "--all-processes", build(FIX), "--json")
    assert r.returncode == 10, r.stdout + r.stderr
    outcomes = {p["pid"]: p for p in json.loads(r.stdout)["processes"]}
    assert outcomes[good.pid]["outcome"] == "patched" and good.ask("compute 5") == "51"
    assert outcomes[changed.pid]["outcome"] == "failed" and "differs" in outcomes[changed.pid]["message"]
    assert changed.status("TracerPid") == "0"
    r = hotpatch("apply", "--all-processes", str(tmp_path / "missing.hp"))
    assert r.returncode == 6 and "missing.hp" in r.stderr


def test_status_host_wide(build, spawn):
    """status: the processes that carry a patch, and those that map its binary without it."""
    carrier, bare = spawn(build(TARGET)), spawn(build(TARGET))
    assert hotpatch(str(carrier.pid), build(FIX)).returncode == 0
    r = hotpatch("status", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [(c["pid"], c["id"]) for c in report["carried"] if c["pid"] in (carrier.pid, bare.pid)] == \
        [(carrier.pid, 1)]
    assert [m["pid"] for m in report["missing"] if m["pid"] in (carrier.pid, bare.pid)] == [bare.pid]
    assert bare.status("TracerPid") == "0" and carrier.status("TracerPid") == "0"   # read only


def test_revert_everywhere(build, spawn):
    ts = [spawn(build(TARGET)) for _ in range(3)]
    assert hotpatch("apply", "--all-processes", build(FIX)).returncode == 0
    assert all(t.ask("compute 5") == "51" for t in ts)
    r = hotpatch("revert", "--all-processes", build(FIX), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p["pid"] for p in json.loads(r.stdout)["processes"]) == sorted(t.pid for t in ts)
    assert all(t.ask("compute 5") == "11" for t in ts)
    r = hotpatch("revert", "--all-processes", build(FIX))
    assert r.returncode == 0 and "no process carries it" in r.stdout


def test_selected_by_name(build, spawn, tmp_path):
    """--name: only the processes of that name among those mapping the binary (a copy of the program under
    another name maps the same binary)."""
    renamed = str(tmp_path / "billing")
    shutil.copy(build(TARGET), renamed)
    plain, billing = spawn(build(TARGET)), spawn(renamed)
    r = hotpatch("apply", "--all-processes", build(FIX), "--name", "billing", "--json")
    assert r.returncode == 0, r.stderr
    assert [p["pid"] for p in json.loads(r.stdout)["processes"]] == [billing.pid]
    assert billing.ask("compute 5") == "51" and plain.ask("compute 5") == "11"
