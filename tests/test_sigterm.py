"""SIGTERM, SIGINT or SIGHUP to hotpatch at a random moment: the target ends fully
patched (hotpatch finished first) or fully unpatched (exit 130), checked by bytes
and behaviour. bench/sigterm_trials.py runs many more trials and prints the figures."""

import os
import random
import signal
import subprocess
import sys
import time

from conftest import ROOT

FUNCTIONS = ("compute", "fact", "version")


def trial(t, binary, patch, original, sig, delay):
    p = subprocess.Popen([sys.executable, "-m", "hotpatch", str(t.pid), patch], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)
    code = {f: t.read_mem(t.symbol_address(binary, f), 32) for f in FUNCTIONS}
    changed = {f for f in FUNCTIONS if code[f] != original[f]}
    # All or nothing, whatever the exit: a signal may also arrive before our
    # handlers exist (nothing done yet) or after the patch stands (while the
    # interpreter shuts down), and then kills hotpatch with that signal.
    assert changed in (set(), set(FUNCTIONS)), (p.returncode, err, changed)
    if changed:
        assert p.returncode in (0, -sig), (p.returncode, err)
        assert t.ask("compute 5") == "51"
        r = subprocess.run([sys.executable, "-m", "hotpatch", "revert", str(t.pid)], cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return "patched"
    assert p.returncode != 0, err
    if err.startswith("hotpatch:"):
        assert p.returncode == 130 and err.strip().startswith("hotpatch: interrupted by"), err
    assert t.ask("compute 5") == "11"
    r = subprocess.run([sys.executable, "-m", "hotpatch", "list", str(t.pid)], cwd=ROOT,
                       capture_output=True, text=True)
    assert "no patches" in r.stdout, r.stdout    # no image left behind
    return "unpatched"


def test_random_termination(cc, spawn):
    binary = cc.program("target.c", "-fPIE", "-pie")
    patch = cc.patch("patch_target.c", binary)
    t = spawn(binary)
    original = {f: t.read_mem(t.symbol_address(binary, f), 32) for f in FUNCTIONS}
    rng = random.Random(1234)
    outcomes = [trial(t, binary, patch, original, rng.choice([signal.SIGTERM, signal.SIGINT, signal.SIGHUP]),
                      rng.uniform(0.0, 0.25)) for _ in range(12)]
    with open(f"/proc/{t.pid}/status") as f:
        assert "TracerPid:\t0" in f.read()
    assert t.ask("version") == "v1"
    assert len(outcomes) == 12
