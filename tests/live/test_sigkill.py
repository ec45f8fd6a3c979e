"""SIGKILL of hotpatch at every step of apply and revert, of the command the user ran and of the
executor that traces: no process is harmed, and after the next run each is fully patched or fully
unpatched, with no image left and no thread left traced. A run of bench/sigkill_trials.py."""

import subprocess
import sys

import pytest
from harness import ROOT, host_only

pytestmark = host_only("bench/sigkill_trials.py builds its target and patch itself")


@pytest.mark.parametrize("who,next_run", [("command", "gc"), ("executor", "gc"), ("executor", "list")])
def test_sigkill_at_every_step(who, next_run):
    r = subprocess.run([sys.executable, "bench/sigkill_trials.py", "--exact", "--who", who, "--next", next_run],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SIGKILL of the {who}, at every step: 15 trials" in r.stdout and "targets harmed: 0" in r.stdout


def test_sigkill_of_the_executor_at_random_moments():
    r = subprocess.run([sys.executable, "bench/sigkill_trials.py", "--who", "executor", "--trials", "15",
                        "--seed", "3"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "15 trials" in r.stdout and "targets harmed: 0" in r.stdout
