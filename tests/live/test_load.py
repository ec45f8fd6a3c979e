"""Apply/revert cycles on an epoll server's handler under continuous load: no failed or
corrupted response, no crash. A short run of bench/load.py (which runs 200 cycles)."""

import subprocess
import sys

from harness import ROOT, host_only

pytestmark = host_only("bench/load.py builds its server and patch itself")


def test_patch_under_load():
    r = subprocess.run([sys.executable, "bench/load.py", "--cycles", "5", "--clients", "4"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "failed or corrupted: 0" in r.stdout and "versions seen: v1, v2" in r.stdout
    assert "apply/revert cycles under load: 5 in" in r.stdout
