#!/usr/bin/env python3
"""Time from exec to patched under `hotpatch daemon`, and apply --all-processes per process.

    python3 bench/daemon.py [--processes 10]

A signed patch is installed (a throwaway ed25519 key and trust file); the daemon polls only every 30 s, so
a process started after it is patched on the kernel's exec event. Each new process of the test target is
asked `compute 5` until it answers as patched: the time from its start to that answer is printed.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from harness import Builder, Patch, Program, Targets, hotpatch  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--processes", type=int, default=10)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        b = Builder(work)
        target = Program("target.c", "-fPIE", "-pie")
        exe, fix = b(target), b(Patch("patch_target.c", target))
        key = os.path.join(work, "key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        kind, blob = open(key + ".pub").read().split()[:2]
        trust = os.path.join(work, "allowed_signers")
        with open(trust, "w") as f:
            f.write(f'bench namespaces="hotpatch" {kind} {blob}\n')
        patch = os.path.join(work, "fix.hp")
        shutil.copy(fix, patch)
        hotpatch("sign", patch, "--key", key)
        patch_dir = os.path.join(work, "patches")
        assert hotpatch("install", patch, "--patch-dir", patch_dir, "--trust", trust).returncode == 0
        daemon = subprocess.Popen([sys.executable, "-m", "hotpatch", "daemon", "--patch-dir", patch_dir, "--trust",
                                   trust, "--interval", "30"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        times = []
        try:
            time.sleep(1.0)   # the daemon's first pass (no process yet)
            with Targets() as start:
                for _ in range(args.processes):
                    t0 = time.perf_counter()
                    t = start([exe])
                    while t.ask("compute 5") != "51":
                        if time.perf_counter() - t0 > 20:
                            raise SystemExit("a process was not patched within 20 s")
                    times.append((time.perf_counter() - t0) * 1000)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.communicate(timeout=30)
    print(f"exec to patched under the daemon ({args.processes} processes, exec events, 2 CPUs):")
    print(f"  median {statistics.median(times):.0f} ms, max {max(times):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
