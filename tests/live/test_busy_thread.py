"""A thread sleeping inside the function to replace: exit 3 within the deadline, naming the
thread's function, and the process unharmed (same code, same mappings, not traced, old answers)."""

import time

import pytest
from harness import TIME_SCALE, Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

TARGET = Program("busy.c", "-fPIE", "-pie")
FIX = Patch("patch_work.c", TARGET)


def test_busy_thread_refused(build, spawn):
    binary = build(TARGET)
    t = spawn(binary)
    entry = t.symbol_address(binary, "work")
    before_code = t.read_mem(entry, 32)
    before_maps = t.maps()
    assert t.ask("work 1") == "2"

    start = time.monotonic()
    r = hotpatch(str(t.pid), build(FIX), "--timeout", "1")
    elapsed = time.monotonic() - start
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert 1 <= elapsed < 6 * TIME_SCALE, elapsed     # it waited out its timeout, and not much longer
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "work" in line and "will return into" in line and "--timeout" in line

    assert t.read_mem(entry, 32) == before_code
    assert t.maps() == before_maps            # the image was unmapped again
    assert t.ask("work 1") == "2"             # still serving, old code
    assert t.alive()
    assert t.status("TracerPid") == "0"
