"""SIGTERM, SIGINT or SIGHUP to hotpatch at random moments: every process ends fully
patched or fully unpatched. A short run of bench/sigterm_trials.py (which runs 500)."""

import subprocess
import sys

from harness import ROOT, host_only

pytestmark = host_only("bench/sigterm_trials.py builds its target and patch itself")


def test_random_termination():
    r = subprocess.run([sys.executable, "bench/sigterm_trials.py", "--trials", "15", "--seed", "7"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "random termination trials: 15;" in r.stdout and "targets harmed: 0" in r.stdout
