"""A refusal names the thread's real call chain, in text and in --json: a thread sleeping in a callee of
the function to replace, and one inside a signal handler that interrupted it. (The program's own functions
are named everywhere; libc's local ones, such as start_thread, only where libc has symbols.)"""

import json

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

SLEEPER = Program("busy.c", "-fPIE", "-pie")
HANDLER = Program("handler_busy.c", "-fPIE", "-pie")


@pytest.mark.parametrize("program, chain", [
    (SLEEPER, ["work", "parker"]),
    (HANDLER, ["park", "work", "spinner"]),
])
def test_busy_thread_backtrace(build, spawn, program, chain):
    t = spawn(build(program))
    r = hotpatch(str(t.pid), build(Patch("patch_work.c", program)), "--timeout", "0.3", "--json")
    assert r.returncode == 3, r.stdout
    busy = json.loads(r.stdout)["busy"]
    assert busy["function"] == "work" and busy["how"] == "will return into"
    names = busy["backtrace"]
    assert [n for n in names if n in chain] == chain, names     # in order, innermost first
    assert names.index(chain[-1]) < len(names) - 1, names       # and on to the thread's start
    text = hotpatch(str(t.pid), build(Patch("patch_work.c", program)), "--timeout", "0.3").stderr
    assert " <- ".join(chain[:2]) in text or f"{chain[0]} <- " in text
