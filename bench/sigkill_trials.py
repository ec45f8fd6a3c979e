#!/usr/bin/env python3
"""SIGKILL sent to hotpatch at a random moment of an apply, or at each of its steps, many times.

    python3 bench/sigkill_trials.py [--who command|executor] [--trials 200] [--seed 1] [--exact] [--next gc|list]

--who command (default) kills the command the user ran (`kill -9`, `timeout -s KILL`); --who executor
kills the process that traces the target (bench/README: the OOM killer, `pkill -9 -f hotpatch`).
--exact kills at each step of apply and revert (HOTPATCH_PAUSE_AT) instead of at random moments.

After each kill the next hotpatch run (`hotpatch gc PID`, or `list`) is made, as an operator would; then the
target must be alive, fully patched or fully unpatched (every replaced function's bytes and its
behaviour), with no image left behind and no thread left traced or stopped. Prints the tally;
exit status 1 if any target was harmed.
"""

import argparse
import ctypes
import os
import random
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from harness import Builder, Targets, children_of, hotpatch, hotpatch_popen  # noqa: E402
from sigterm_trials import FIX, FUNCTIONS, TARGET, code_of, report  # noqa: E402

# "registered" is reached only in a process with libgcc's unwinder loaded (a C++ program): not this one.
APPLY_STEPS = ("parsed", "verified", "resolved", "mapped", "filled", "stopping", "stopped", "checked",
               "first-switched", "switched")
REVERT_STEPS = ("stopping", "stopped", "checked", "first-restored", "unmapping")
PR_SET_CHILD_SUBREAPER = 36
SETTLE_TIMEOUT = 30.0


def reap_orphans(known: set[int]) -> None:
    """Wait for the executors orphaned by a killed command (this process is their subreaper)."""
    for pid in children_of(os.getpid()):
        if pid not in known:
            os.waitpid(pid, 0)


def traced_or_stopped(pid: int) -> list[str]:
    bad = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except OSError:
            continue
        if "TracerPid:\t0\n" not in status or "State:\tt" in status:
            bad.append(tid)
    return bad


NEXT_RUN = "gc"


def judge(t, entries, original) -> str:
    """After the next run: 'patched', 'unpatched', or the harm done."""
    if not t.alive():
        return f"TARGET DIED (status {t.proc.returncode})"
    repaired = hotpatch(NEXT_RUN, str(t.pid))   # the next run: it repairs what the killed one left
    if repaired.returncode != 0 or "could not be repaired" in repaired.stderr:
        return f"the next run ({NEXT_RUN}) failed: {repaired.stderr.strip()}"
    listed = hotpatch("list", str(t.pid))
    if not t.alive():
        return f"TARGET DIED after list (status {t.proc.returncode})"
    if listed.returncode != 0:
        return f"list failed: {listed.stderr.strip()}"
    if traced_or_stopped(t.pid):
        return "threads left traced or stopped"
    code = code_of(t, entries)
    changed = {f for f in FUNCTIONS if code[f] != original[f]}
    if changed == set(FUNCTIONS):
        if t.ask("compute 5") != "51":
            return "patched bytes but old behaviour"
        if " active " not in listed.stdout:
            return f"patched but listed as: {listed.stdout.strip()}"
        r = hotpatch("revert", str(t.pid))
        return "patched" if r.returncode == 0 else f"revert failed: {r.stderr.strip()}"
    if changed:
        return f"HALF PATCHED: {sorted(changed)}"
    if t.ask("compute 5") != "11":
        return "unpatched bytes but new behaviour"
    if "no patches" not in listed.stdout:
        return f"image left behind: {listed.stdout.strip()}"
    if "[anon:hotpatch" in open(f"/proc/{t.pid}/maps").read():
        return "unlisted image left behind"
    return "unpatched"


def kill_one(p, who: str) -> None:
    """SIGKILL, and wait until it has taken effect (the command exits once its executor has died)."""
    if who == "command":
        p.kill()
    else:
        for pid in children_of(p.pid):
            os.kill(pid, signal.SIGKILL)
    p.wait(timeout=SETTLE_TIMEOUT)


def trial(t, entries, patch, original, who: str, delay: float | None, step: str | None, known) -> str:
    if step is not None and step.startswith("revert:"):
        r = hotpatch(str(t.pid), patch)
        if r.returncode != 0:
            return f"setup apply failed: {r.stderr.strip()}"
        p = hotpatch_popen("revert", str(t.pid), env={"HOTPATCH_PAUSE_AT": step})
    else:
        p = hotpatch_popen(str(t.pid), patch, env={"HOTPATCH_PAUSE_AT": step} if step else None)
    if step is not None:
        line = p.stderr.readline().strip()
        if line != f"hotpatch: paused at {step}":
            p.communicate(timeout=SETTLE_TIMEOUT)
            hotpatch("revert", "--all", str(t.pid))
            return f"did not pause at {step}: {line}"
    else:
        time.sleep(delay)
    kill_one(p, who)
    if step is not None:
        try:
            p.stdin.write("\n")   # the executor, if it lives on, reads the pause's line from the same pipe
            p.stdin.flush()
        except OSError:
            pass
    p.communicate(timeout=SETTLE_TIMEOUT)
    reap_orphans(known)
    return judge(t, entries, original)


def run(who: str, trials: int, seed: int, exact: bool, args_verbose: bool = False) -> dict:
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    rng = random.Random(seed)
    tally: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="hotpatch-sigkill-") as work, Targets() as start:
        build = Builder(work)
        binary, patch = build(TARGET), build(FIX)
        t = start([binary])
        known = {t.pid}
        entries = {f: t.symbol_address(binary, f) for f in FUNCTIONS}
        original = code_of(t, entries)
        if exact:
            plan = [(None, f"apply:{s}") for s in APPLY_STEPS] + [(None, f"revert:{s}") for s in REVERT_STEPS]
        else:
            plan = [(rng.uniform(0.0, 0.25), None) for _ in range(trials)]
        for delay, step in plan:
            outcome = trial(t, entries, patch, original, who, delay, step, known)
            tally[outcome] = tally.get(outcome, 0) + 1
            if args_verbose or outcome not in ("patched", "unpatched"):
                when = step or f"after {delay * 1000:.1f} ms"
                print(f"SIGKILL of the {who} {when}: {outcome}", file=sys.stderr)
            if outcome.startswith("TARGET DIED"):
                break
        tally["alive at the end"] = int(t.alive())
    return tally


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--who", choices=("command", "executor"), default="command")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--exact", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="print every trial's outcome")
    ap.add_argument("--next", choices=("gc", "list"), default="gc", help="the run made after each kill")
    args = ap.parse_args()
    global NEXT_RUN
    NEXT_RUN = args.next
    tally = run(args.who, args.trials, args.seed, args.exact, args.verbose)
    total = sum(n for k, n in tally.items() if k != "alive at the end")
    head = f"SIGKILL of the {args.who}, {'at every step' if args.exact else 'at random moments'}: {total} trials;"
    sys.exit(1 if report(tally, head) else 0)


if __name__ == "__main__":
    main()
