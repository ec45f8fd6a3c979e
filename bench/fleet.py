#!/usr/bin/env python3
"""apply --all-processes: the cost of one more process.

    python3 bench/fleet.py [--processes 200] [--runs 5] [--jobs N]

N idle processes of the test target are started; each run applies the patch to all of them with
`hotpatch apply --all-processes --json` and reverts it the same way. Printed: the command's own time
(its report's "seconds": finding the processes and patching them, after the patch is read) divided by N,
the amortised cost per process; the CLI's wall time from start to exit; the median pause of a process;
and the marginal cost, from the difference between N and N/4 processes. Figures only: nothing is asserted.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from harness import Builder, Patch, Program, Targets  # noqa: E402


def cli(*args: str) -> tuple[float, dict]:
    """(wall ms, JSON report) of one CLI run, which must succeed."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "hotpatch", *args, "--json"], capture_output=True, text=True,
                       cwd=ROOT)
    wall = (time.perf_counter() - t0) * 1000
    if r.returncode != 0:
        raise SystemExit(f"hotpatch {' '.join(args)} exited {r.returncode}: {r.stdout[-500:]} {r.stderr[-500:]}")
    return wall, json.loads(r.stdout)


def measure(processes: int, runs: int, jobs: int | None = None, work: str | None = None) -> dict:
    """Apply and revert `runs` times over `processes` processes: per-process figures (ms)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8 * processes + 256)), hard))
    extra = ["--jobs", str(jobs)] if jobs else []
    with tempfile.TemporaryDirectory(prefix="hotpatch-fleet-", dir=work) as tmp:
        b = Builder(tmp)
        target = Program("target.c", "-fPIE", "-pie")
        exe, fix = b(target), b(Patch("patch_target.c", target))
        per, walls, stops, reverts = [], [], [], []
        with Targets() as start:
            ts = [start([exe]) for _ in range(processes)]
            for _ in range(runs):
                wall, report = cli("apply", "--all-processes", fix, *extra)
                if report["summary"] != {"patched": processes}:
                    raise SystemExit(f"not all patched: {report['summary']}")
                per.append(report["seconds"] * 1000 / processes)
                walls.append(wall / processes)
                stops += [p["stop_ms"] for p in report["processes"] if p.get("stop_ms") is not None]
                if ts[0].ask("compute 5") != "51":
                    raise SystemExit("the first process does not answer as patched")
                _, report = cli("revert", "--all-processes", fix, *extra)
                reverts.append(report["seconds"] * 1000 / processes)
    return {"per_process": per, "wall_per_process": walls, "stop": stops, "revert_per_process": reverts}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=200)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--jobs", type=int, default=None, help="as the CLI's --jobs (default: its own)")
    args = p.parse_args()
    report(args.processes, args.runs, args.jobs)
    return 0


def report(processes: int, runs: int, jobs: int | None = None) -> None:
    big = measure(processes, runs, jobs)
    small_n = max(1, processes // 4)
    small = measure(small_n, runs, jobs)
    med = statistics.median
    marginal = (med(big["per_process"]) * processes - med(small["per_process"]) * small_n) / (processes - small_n)
    print(f"apply --all-processes, {processes} idle processes of one binary, {runs} runs, {os.cpu_count()} CPUs "
          f"(min / median / max, ms per process)")
    for label, values in (("amortised (report's seconds / N)", big["per_process"]),
                          ("CLI wall time / N", big["wall_per_process"]),
                          ("revert --all-processes", big["revert_per_process"])):
        print(f"  {label:34} {min(values):6.2f} {med(values):6.2f} {max(values):6.2f}")
    print(f"  {'marginal (N vs N/4 processes)':34} {marginal:6.2f}")
    print(f"  {'pause of each process (stop ms)':34} {min(big['stop']):6.2f} {med(big['stop']):6.2f} "
          f"{max(big['stop']):6.2f}")


if __name__ == "__main__":
    sys.exit(main())
