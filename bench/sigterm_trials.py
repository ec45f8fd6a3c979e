#!/usr/bin/env python3
"""SIGTERM, SIGINT or SIGHUP sent to `hotpatch PID PATCHFILE` at a random moment, many times.

    python3 bench/sigterm_trials.py [--trials 500] [--seed 1]

Each trial must leave the target fully patched or fully unpatched (every
replaced function's bytes, its behaviour, no image left behind), and exit 130
whenever hotpatch itself reports the interruption. Prints the tally; exit
status 1 if any target was harmed.
"""

import argparse
import os
import random
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from harness import Builder, Patch, Program, Targets, hotpatch, hotpatch_popen  # noqa: E402

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)
FUNCTIONS = ("compute", "fact", "version")


def code_of(t, entries) -> dict:
    return {f: t.read_mem(a, 32) for f, a in entries.items()}


def trial(t, entries, patch, original, sig, delay) -> str:
    """'patched', 'unpatched', or a description of the harm done."""
    p = hotpatch_popen(str(t.pid), patch)
    time.sleep(delay)
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    if not t.alive():
        return f"TARGET DIED (status {t.proc.returncode}) after exit {p.returncode}: {err.strip()}"
    code = code_of(t, entries)
    changed = {f for f in FUNCTIONS if code[f] != original[f]}
    # A signal may also arrive before hotpatch's handlers exist (nothing done
    # yet) or after the patch stands (interpreter shutdown): it then dies of it.
    if changed == set(FUNCTIONS):
        if p.returncode not in (0, -sig):
            return f"patched but exit {p.returncode}: {err.strip()}"
        if t.ask("compute 5") != "51":
            return "patched bytes but old behaviour"
        r = hotpatch("revert", str(t.pid))
        return "patched" if r.returncode == 0 else f"revert failed: {r.stderr.strip()}"
    if changed:
        return f"HALF PATCHED: {sorted(changed)} (exit {p.returncode}: {err.strip()})"
    if p.returncode == 0:
        return "exit 0 but nothing patched"
    if err.startswith("hotpatch:") and p.returncode != -sig and not (p.returncode == 130 and "interrupted by" in err):
        return f"unexpected report: exit {p.returncode}: {err.strip()}"
    if t.ask("compute 5") != "11":
        return "unpatched bytes but new behaviour"
    if "no patches" not in hotpatch("list", str(t.pid)).stdout:
        return "image left behind"
    return "unpatched"


def run(trials: int, seed: int) -> dict:
    rng = random.Random(seed)
    tally: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="hotpatch-sigterm-") as work, Targets() as start:
        build = Builder(work)
        binary, patch = build(TARGET), build(FIX)
        t = start([binary])
        entries = {f: t.symbol_address(binary, f) for f in FUNCTIONS}
        original = code_of(t, entries)
        for _ in range(trials):
            sig = rng.choice([signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
            delay = rng.uniform(0.0, 0.25)
            outcome = trial(t, entries, patch, original, sig, delay)
            tally[outcome] = tally.get(outcome, 0) + 1
            if outcome.startswith("TARGET DIED"):
                print(f"signal {sig.name} after {delay * 1000:.0f} ms: {outcome}", file=sys.stderr)
                break
        tally["alive at the end"] = int(t.alive())
    return tally


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    tally = run(args.trials, args.seed)
    sys.exit(1 if report(tally, f"random termination trials: {args.trials}; ended") else 0)


def report(tally: dict, head: str) -> int:
    """Print the tally after `head`, and each kind of harm; the number of targets harmed."""
    harmed = sum(n for k, n in tally.items() if k not in ("patched", "unpatched", "alive at the end"))
    harmed += 1 - tally.get("alive at the end", 0)
    print(f"{head} fully patched: {tally.get('patched', 0)}; fully unpatched: {tally.get('unpatched', 0)}; "
          f"targets harmed: {harmed}")
    for k, n in tally.items():
        if k not in ("patched", "unpatched", "alive at the end"):
            print(f"  {n} x {k}")
    return harmed


if __name__ == "__main__":
    main()
