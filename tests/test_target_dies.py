"""The target killed at a random moment of apply: hotpatch notices, says so in one
line and exits within 2 s; it never hangs."""

import random
import subprocess
import sys
import time

from conftest import ROOT


def test_target_killed_mid_apply(cc, spawn):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    rng = random.Random(99)
    outcomes = []
    for _ in range(8):
        t = spawn(binary)
        p = subprocess.Popen([sys.executable, "-m", "hotpatch", str(t.pid), patch], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.03, 0.2))
        t.proc.kill()
        killed_at = time.monotonic()
        out, err = p.communicate(timeout=30)
        elapsed = time.monotonic() - killed_at
        assert elapsed < 2.0, elapsed
        assert "Traceback" not in err
        if p.returncode == 0:
            outcomes.append("finished first")
        else:
            assert p.returncode == 5, (p.returncode, err)
            assert err.count("\n") == 1 and ("exited" in err or "does not exist" in err), err
            outcomes.append("noticed")
    assert "noticed" in outcomes
