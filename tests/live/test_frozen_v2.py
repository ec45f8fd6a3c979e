"""A process frozen by the cgroup v2 freezer (systemd and container runtimes use it) is refused before
anything is done to it, apply and revert alike, and runs normally once thawed. (Before, a failed apply
left a thread to run an injected system call when thawed: killed, 8 times out of 8.)"""

import json
import os
import time

import pytest
from harness import TIME_SCALE, Patch, Program, freeze, hotpatch, write

pytestmark = pytest.mark.arm64
TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def test_frozen_v2_is_refused_and_harmed_not(build, spawn, v2_group):
    t = spawn(build(TARGET))
    write(os.path.join(v2_group, "cgroup.procs"), str(t.pid))
    r = hotpatch(str(t.pid), build(FIX), "--json")          # applied while thawed, to revert while frozen
    assert r.returncode == 0, r.stderr
    entry = int(json.loads(r.stdout)["functions"][0]["entry"], 16)
    code, maps = t.read_mem(entry, 16), t.maps()
    freeze(v2_group, True)
    for args in (["revert", str(t.pid)], [str(t.pid), build(FIX)], ["gc", str(t.pid)]):
        start = time.monotonic()
        r = hotpatch(*args)
        assert r.returncode == 5 and "frozen by the cgroup v2 freezer" in r.stderr, r.stderr
        assert time.monotonic() - start < 5 * TIME_SCALE   # refused at once, not after a stop timeout
        assert r.stderr.count("\n") == 1
    assert t.read_mem(entry, 16) == code and t.maps() == maps
    freeze(v2_group, False)
    assert t.ask("compute 5") == "51" and t.status("TracerPid") == "0"   # the patched answer, alive
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("compute 5") == "11"
