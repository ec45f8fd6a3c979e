#!/usr/bin/env python3
"""The unwinder's speed on a recorded walk: python3 bench/unwind.py [--repeat N]

Starts fixtures/unwind_stacks.c (threads parked in nanosleep, read, signal handlers, a 41-deep
recursion), records every thread's registers and stack once (all stopped), lets it run again, then
times on the recording:
  * preparing the tables (open each module, read .eh_frame_hdr): done while the target runs;
  * the first walk of every thread (cold: each FDE a walk meets is parsed once);
  * warm walks (every rule a dict hit), full and bounded by a stop_above at each thread's 3rd frame,
    in microseconds per frame and per thread: the cost in the commit stop when threads must be unwound.
Figures only: nothing here asserts a timing.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import harness  # noqa: E402

from hotpatch.elf.cfi import CallFrameTable  # noqa: E402
from hotpatch.process import ptrace as P  # noqa: E402
from hotpatch.process.attach import attach, process_arch  # noqa: E402
from hotpatch.process.maps import MapIndex  # noqa: E402
from hotpatch.process.modules import loaded_modules  # noqa: E402
from hotpatch.safety.unwind import CodeMap, stack_reader, unwind  # noqa: E402


def record(pid: int):
    """(arch, [(tid, regs, sp, stack bytes)], code sources) with every thread stopped once."""
    arch = process_arch(pid)
    proc = attach(pid, arch)
    try:
        maps = proc.maps()
        modules = loaded_modules(pid, maps, proc.mem).modules
        sources = []
        for m in maps:
            if not m.executable:
                continue
            module = next((mod for mod in modules if mod.path == m.path), None)
            if module is not None:
                sources.append((m.start, m.end, ("file", module.path), module.bias))   # read after it exits
            elif m.path == "[vdso]":
                sources.append((m.start, m.end, ("memory", proc.mem.read_available(m.start, m.end - m.start)), 0))
            else:
                sources.append((m.start, m.end, None, 0))
        index = MapIndex(maps)
        proc.stop_all()
        threads = []
        for tid in sorted(proc.threads.tracees):
            regs = P.get_regs(tid, arch.regs_type)
            sp = arch.sp(regs)
            threads.append((tid, regs, sp, proc.mem.read_available(sp, index.find(sp).end - sp)))
        proc.resume_all()
    finally:
        proc.close()
    return arch, threads, sources


def code_map(arch, sources) -> CodeMap:
    code, tables = CodeMap(arch), {}
    for start, end, source, bias in sources:
        if source is None:
            code.add(start, end, None)
        elif source[0] == "file":
            if source[1] not in tables:
                tables[source[1]] = CallFrameTable.from_path(source[1])
            code.add(start, end, tables[source[1]], bias)
        else:
            image = source[1]
            table = CallFrameTable.from_memory(lambda a, n: image[a - start:a - start + n], start, len(image))
            code.add(start, end, table, table.load_bias)
    return code


def walk_all(arch, threads, find_rule, bounds=None):
    frames = 0
    for i, (_, regs, sp, stack) in enumerate(threads):
        walk = unwind(arch, regs, stack_reader(stack, sp), find_rule, bounds[i] if bounds else None)
        frames += len(walk.frames)
    return frames


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="bench-unwind-")
    # prebuilt in the ARM64 guest (tests/arm64/prepare.py builds it for tests/live/test_unwind_stacks.py)
    binary = harness.Builder(out, prebuilt=harness.PREBUILT)(harness.Program("unwind_stacks.c", "-fPIE", "-pie"))
    with harness.Targets() as start:
        t = start(binary)
        arch, threads, sources = record(t.pid)

    t0 = time.perf_counter()
    code = code_map(arch, sources)
    prepare_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    frames = walk_all(arch, threads, code.find_rule)
    cold_ms = (time.perf_counter() - t0) * 1e3
    walks = [unwind(arch, regs, stack_reader(stack, sp), code.find_rule) for _, regs, sp, stack in threads]
    assert all(w.reliable for w in walks), [w.why() for w in walks if not w.reliable]
    # A bound as the activeness check gives it: the highest candidate word, here at the 3rd frame's CFA.
    bounds = [w.frames[min(2, len(w.frames) - 1)].cfa or 0 for w in walks]
    bounded_frames = walk_all(arch, threads, code.find_rule, bounds)

    def per_frame(bounds=None, n=frames):
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(args.repeat):
                walk_all(arch, threads, code.find_rule, bounds)
            runs.append((time.perf_counter() - t0) / args.repeat)
        best = min(runs)
        return best / n * 1e6, best / len(threads) * 1e6, statistics.median(runs) / n * 1e6

    full = per_frame()
    bounded = per_frame(bounds, bounded_frames)
    print(f"{arch.name}: {len(threads)} threads, {frames} frames ({bounded_frames} when bounded), "
          f"{len(sources)} code mappings")
    print(f"  prepare tables          {prepare_ms:8.2f} ms   (before the stop)")
    print(f"  first walk, cold        {cold_ms:8.2f} ms   ({cold_ms * 1e3 / frames:.1f} us/frame: FDEs parsed)")
    print(f"  warm, full walks        {full[0]:8.2f} us/frame (median {full[2]:.2f}), {full[1]:.1f} us/thread")
    print(f"  warm, bounded walks     {bounded[0]:8.2f} us/frame (median {bounded[2]:.2f}), "
          f"{bounded[1]:.1f} us/thread")


if __name__ == "__main__":
    main()
