"""The process killed at a random moment of apply: hotpatch notices, says so in one
line and exits within 2 s; it never hangs."""

import random
import time

import pytest
from harness import TIME_SCALE, Patch, Program, hotpatch_popen

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def test_target_killed_mid_apply(build, spawn):
    binary, patch = build(TARGET), build(FIX)
    rng = random.Random(99)
    outcomes = []
    for _ in range(8):
        t = spawn(binary)
        p = hotpatch_popen(str(t.pid), patch)
        time.sleep(rng.uniform(0.03, 0.2) * TIME_SCALE)   # the moment of death is the scenario's variable
        t.proc.kill()
        killed_at = time.monotonic()
        out, err = p.communicate(timeout=30 * TIME_SCALE)
        elapsed = time.monotonic() - killed_at
        assert elapsed < 2.0 * TIME_SCALE, elapsed
        assert "Traceback" not in err
        if p.returncode == 0:
            outcomes.append("finished first")
        else:
            assert p.returncode == 5, (p.returncode, err)
            assert err.count("\n") == 1 and ("exited" in err or "does not exist" in err), err
            outcomes.append("noticed")
    assert "noticed" in outcomes
