#!/usr/bin/env python3
"""hotpatch benchmarks, one command: python3 bench/run.py [--quick] [--runs N]

Prints min/median/max of:
  * target stop time (the largest gap a probe thread spinning on CLOCK_MONOTONIC
    sees during the apply) with 2, 52 and 1000 threads, beside the floor measured
    in the same run (bench/floor.c: seize, interrupt, read registers, detach);
  * apply wall time, `hotpatch PID PATCHFILE` from start to exit;
  * per-call overhead of a patched function (jmp rel32) against the unpatched one;
  * build, apply time and peak memory for a patch replacing 1,000 functions;
  * apply --all-processes per process (bench/fleet.py; 200 processes, 20 with --quick).
Figures only: nothing here asserts a timing.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from harness import Builder, Patch, Program, Targets, hotpatch_timed  # noqa: E402

hotpatch = hotpatch_timed   # (wall ms, peak MB, stdout), raising if it fails

def stats(values):
    return f"{min(values):8.2f} {statistics.median(values):8.2f} {max(values):8.2f}"


def stop_times(binary, floor_binary, threads, runs, patch, mode=None):
    floor, floor_window, ours, ours_revert, wall, window = [], [], [], [], [], []
    with Targets() as start:
        target = start([binary, str(threads), *([mode] if mode else [])], timeout=120)
        for _ in range(runs):
            target.ask("arm")
            out = subprocess.run([floor_binary, str(target.pid)], check=True, capture_output=True, text=True).stdout
            floor.append(int(target.ask("gap")) / 1e6)
            floor_window.append(float(out) / 1000)
            target.ask("arm")
            w, _, out = hotpatch(str(target.pid), patch, "--json")
            ours.append(int(target.ask("gap")) / 1e6)
            wall.append(w)
            t = json.loads(out)["timings_ms"]
            window.append(t["resumed"] - t["stopping"])
            target.ask("arm")
            hotpatch("revert", str(target.pid))
            ours_revert.append(int(target.ask("gap")) / 1e6)
    return floor, floor_window, ours, ours_revert, wall, window


def call_overhead(binary, calls, runs, patch):
    """ns per call, unpatched and patched, measured alternately on one target
    (so that a drift of the machine touches both series alike)."""
    unpatched, patched = [], []
    with Targets() as start:
        target = start([binary, "1"])
        for _ in range(runs):
            unpatched.append(int(target.ask(f"calls {calls}", timeout=120).split()[0]) / calls)
            hotpatch(str(target.pid), patch)
            patched.append(int(target.ask(f"calls {calls}", timeout=120).split()[0]) / calls)
            hotpatch("revert", str(target.pid))
    return unpatched, patched


def thousand_functions(work, runs):
    n = 1000
    src = os.path.join(work, "many.c")
    with open(src, "w") as f:
        f.write("#include <stdio.h>\n#include <stdlib.h>\n")
        for i in range(n):
            f.write(f"__attribute__((noinline)) int f{i}(int x) {{ return x * {i % 7 + 2} + {i}; }}\n")
        f.write(f"int (*table[{n}])(int) = {{" + ",".join(f"f{i}" for i in range(n)) + "};\n")
        f.write('int main(void){char l[64];setvbuf(stdout,0,_IOLBF,0);printf("ready\\n");'
                'while(fgets(l,64,stdin)){int i=atoi(l);printf("%d\\n",table[i](1));}return 0;}\n')
    fix = os.path.join(work, "many_fix.c")
    with open(fix, "w") as f:
        for i in range(n):
            f.write(f"int f{i}(int x) {{ return x * {i % 7 + 2} + {i} + 1000000; }}\n")
    builder, many = Builder(work), Program(src)
    binary = builder(many)
    t0 = time.perf_counter()
    patch = builder(Patch(fix, many))
    build = (time.perf_counter() - t0) * 1000
    walls, rss, stops = [], [], []
    for _ in range(runs):
        with Targets() as start:
            target = start([binary])
            before = target.ask("999")
            w, peak, out = hotpatch(str(target.pid), patch, "--json")
            t = json.loads(out)["timings_ms"]
            stops.append(t["resumed"] - t["stopping"])
            after = target.ask("999")
            assert int(after) == int(before) + 1000000, (before, after)
            walls.append(w)
            rss.append(peak)
    return build, walls, rss, stops


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few runs, small sizes: checks the bench works")
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    runs = args.runs or (2 if args.quick else 15)
    thread_counts = (2, 52) if args.quick else (2, 52, 1000)
    calls = 10_000_000 if args.quick else 100_000_000

    with tempfile.TemporaryDirectory(prefix="hotpatch-bench-") as work:
        build, target = Builder(work), Program("probe_threads.c")
        binary, floor_binary = build(target), build(Program(os.path.join(HERE, "floor.c")))
        fix = os.path.join(work, "fix.c")
        with open(fix, "w") as f:
            f.write("int work(int x) { return x * 3 + 1; }\n")   # same body: measures the jump only
        patch = build(Patch(fix, target))

        print(f"hotpatch benchmark: {os.cpu_count()} CPUs, kernel {os.uname().release}, {runs} runs each; "
              "min / median / max")
        print("\ntarget stop time (ms): the largest gap seen by a thread spinning on CLOCK_MONOTONIC")
        print(f"{'threads':>8} | {'floor':^26} | {'hotpatch apply':^26} | {'hotpatch revert':^26} | "
              f"{'apply/floor':>11}")
        rows = []
        for n in thread_counts:
            floor, floor_window, ours, revert, wall, window = stop_times(binary, floor_binary, n, runs, patch)
            ratio = statistics.median(ours) / statistics.median(floor)
            rows.append((n, floor_window, wall, window))
            print(f"{n:>8} | {stats(floor)} | {stats(ours)} | {stats(revert)} | {ratio:10.1f}x")
        print("\nstop window (ms): first interrupt to last thread resumed. A thread blocked in a system call")
        print("is held this long at most, and notices only if it is woken meanwhile; running threads are")
        print("stopped last and resumed first, so the probe above sees less.")
        print(f"{'threads':>8} | {'floor':^26} | {'hotpatch apply':^26} | {'apply/floor':>11}")
        for n, floor_window, _, window in rows:
            ratio = statistics.median(window) / statistics.median(floor_window)
            print(f"{n:>8} | {stats(floor_window)} | {stats(window)} | {ratio:10.1f}x")
        n = thread_counts[-1]
        _, _, stale, stale_revert, _, stale_window = stop_times(binary, floor_binary, n, runs, patch, "stale")
        plain = next(r for r in rows if r[0] == n)
        print(f"\nevery thread unwound: {n} threads each holding a stale word pointing into work(), a")
        print("candidate the check dismisses only by walking that thread's real frames (ms)")
        print(f"  target stop, apply:  {stats(stale)}   revert: {stats(stale_revert)}")
        print(f"  stop window, apply:  {stats(stale_window)}   (no candidates: {stats(plain[3])}, "
              f"{statistics.median(stale_window) / statistics.median(plain[3]):.1f}x)")
        print("\napply wall time, CLI start to exit (ms)")
        for n, _, wall, _ in rows:
            print(f"{n:>8} threads: {stats(wall)}")

        unpatched, patched = call_overhead(binary, calls, runs, patch)
        overhead = statistics.median(patched) - statistics.median(unpatched)
        print(f"\nper-call overhead of a patched function ({calls:,} calls a run, {runs} runs of each, alternating)")
        print(f"  unpatched ns/call: {stats(unpatched)}")
        print(f"  patched ns/call:   {stats(patched)}")
        print(f"  overhead (difference of the medians): {overhead:.2f} ns")

        build, walls, rss, stops = thousand_functions(work, max(2, runs // 5))
        print("\npatch replacing 1,000 functions")
        print(f"  hotpatch build:          {build:8.0f} ms")
        print(f"  apply wall time (ms):    {stats(walls)}")
        print(f"  apply peak memory (MB):  {stats(rss)}")
        print(f"  commit window (ms):      {stats(stops)}")

    import fleet  # bench/fleet.py: apply --all-processes
    print()
    fleet.report(20 if args.quick else 200, 1 if args.quick else 5)


if __name__ == "__main__":
    main()
