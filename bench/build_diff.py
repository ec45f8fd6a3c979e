#!/usr/bin/env python3
"""`hotpatch build --diff` against one full build of the same project, side by side.

    python3 bench/build_diff.py [--runs 3]

The project is Lua 5.4.4 from Debian's source package (apt-get source, deb-src lines needed), built with
its own Makefile (`make linux`); the fix is Debian's debian/patches/0004-cve-2022-28805.patch (one file,
src/lparser.c). Each run times a full build of a fresh copy, then `build --diff` from another fresh copy
(which copies the tree, builds it, applies the diff, rebuilds, recompiles the changed file's original and
compares). The two alternate which goes first (this machine's speed drifts by a second over a minute).
Prints the medians and the median of the runs' ratios; the goal is at most 1.3.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from harness import debian_source, unpack  # noqa: E402


def timed(argv, cwd) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    upstream, debian = debian_source("lua5.4")
    with tempfile.TemporaryDirectory() as work:
        src = unpack(upstream, os.path.join(work, "src"))
        unpack(debian, os.path.join(work, "debian"))
        fix = os.path.join(work, "debian", "patches", "0004-cve-2022-28805.patch")
        built = os.path.join(work, "built")
        shutil.copytree(src, built)
        subprocess.run(["make", "-s", "linux"], cwd=built, check=True, capture_output=True)
        full, diff = [], []
        for n in range(args.runs):
            tree = os.path.join(work, f"full-{n}")
            shutil.copytree(src, tree)
            one = [lambda: full.append(timed(["make", "-s", "linux"], tree)),
                   lambda: diff.append(timed([sys.executable, "-m", "hotpatch", "build", "--diff", fix, "--source",
                                              src, "--target", os.path.join(built, "src", "lua"), "--build",
                                              "make linux", "-o", os.path.join(work, "fix.hp")], ROOT))]
            for step in (one if n % 2 == 0 else reversed(one)):
                step()
    f, d = statistics.median(full), statistics.median(diff)
    ratio = statistics.median(b / a for a, b in zip(full, diff))
    print(f"Lua 5.4.4, CVE-2022-28805 fix (1 file), {args.runs} runs, {os.cpu_count()} CPUs")
    print(f"  full build (make linux):        {f:6.2f} s")
    print(f"  hotpatch build --diff:          {d:6.2f} s")
    print(f"  ratio:                          {ratio:6.2f}x (median of the runs' ratios; goal <= 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
