#!/usr/bin/env python3
"""Apply and revert a patch to a live epoll server's request handler while a
load generator keeps requesting; every response is checked.

    python3 bench/load.py [--cycles 200] [--clients 8]

Prints requests served, failed or corrupted responses, cycles done, server
crashes. Exit status 1 if any request failed or was corrupted, or the server died.
"""

import argparse
import http.client
import os
import re
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from harness import Builder, Patch, Program, Targets, hotpatch  # noqa: E402

SERVER = Program("epoll_server.c")
FIX = Patch("patch_render.c", SERVER)
BODY = re.compile(rb"^v([12]) (\d+)\n$")


def client(port, stop, stats, lock):
    ok = bad = 0
    versions = set()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            m = BODY.match(body)
            if resp.status == 200 and m:
                ok += 1
                versions.add(m.group(1))
            else:
                bad += 1
        except (OSError, http.client.HTTPException):
            bad += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with lock:
        stats["ok"] += ok
        stats["bad"] += bad
        stats["versions"] |= versions


def run(cycles: int, clients: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="hotpatch-load-") as work, Targets() as start:
        build = Builder(work)
        server, patch = build(SERVER), build(FIX)
        proc = start([server, "0"], ready_prefix=None)
        ready, port = proc.readline().split()
        assert ready == "ready", ready
        stats = {"ok": 0, "bad": 0, "versions": set()}
        lock, stop = threading.Lock(), threading.Event()
        threads = [threading.Thread(target=client, args=(int(port), stop, stats, lock)) for _ in range(clients)]
        for t in threads:
            t.start()
        done, errors = 0, []
        t0 = time.monotonic()
        try:
            for _ in range(cycles):
                for cmd in (["apply", str(proc.pid), patch], ["revert", str(proc.pid)]):
                    r = hotpatch(*cmd)
                    if r.returncode != 0:
                        errors.append(r.stderr.strip())
                done += 1
                if not proc.alive():
                    break
        finally:
            stop.set()
            for t in threads:
                t.join()
            alive = proc.alive()
        stats.update(cycles=done, seconds=round(time.monotonic() - t0, 1), server_alive=alive, errors=errors)
        return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    s = run(args.cycles, args.clients)
    print(f"apply/revert cycles under load: {s['cycles']} in {s['seconds']} s; "
          f"requests answered correctly: {s['ok']}; failed or corrupted: {s['bad']}; "
          f"versions seen: {', '.join('v' + v.decode() for v in sorted(s['versions']))}; "
          f"server crashed: {'no' if s['server_alive'] else 'YES'}; hotpatch errors: {len(s['errors'])}")
    for e in s["errors"][:5]:
        print("  ", e)
    failed = s["bad"] or not s["server_alive"] or s["errors"] or s["cycles"] != args.cycles
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
