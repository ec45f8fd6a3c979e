"""Every thread of a live process unwound by hotpatch's unwinder, from the registers and stack bytes its own
ptrace helpers capture: a chain of calls blocked in nanosleep, a read() called through the PLT, a handler
blocked after a signal interrupted nanosleep, another after one interrupted a leaf loop (the aarch64
vdso's sigreturn trampoline, read from memory), a 41-deep recursion, the main thread in fgets.

Each walk is reliable, ends at the outermost frame, and names exactly the fixture's functions in order;
on the x86-64 host it is also compared pc for pc with gdb's backtrace of the same threads (gdb is not in
the ARM64 guest)."""

import os
import shutil
import subprocess

import pytest
from harness import ARCH, PREBUILT, TIME_SCALE, Program

from hotpatch.elf.cfi import CallFrameTable
from hotpatch.elf.symbols import load_symbol_table
from hotpatch.process import ptrace as P
from hotpatch.process.attach import MAX_STACK_SCAN, attach, process_arch
from hotpatch.process.maps import MapIndex
from hotpatch.process.modules import loaded_modules, module_file
from hotpatch.safety.unwind import OUTERMOST, SIGRETURN, CodeMap, stack_reader, unwind

pytestmark = pytest.mark.arm64

STACKS = Program("unwind_stacks.c", "-fPIE", "-pie")
DEPTH = 40
SIGNAL = "<signal>"
# The fixture's own frames of each thread, innermost first (library frames in between are not named here).
EXPECTED = {
    "sleeper": ["forever_sleep", "sleep_c", "sleep_b", "sleep_a", "start"],
    "reader": ["read_b", "read_a", "start"],
    "sigsleep": ["handler_block", "on_signal", SIGNAL, "sigsleep_a", "start"],
    "sigspin": ["handler_block", "on_signal", SIGNAL, "spin_leaf", "spin_a", "start"],
    "recurse": ["forever_sleep"] + ["recurse"] * (DEPTH + 1) + ["start"],
    "main": ["main", "_start"],
}
GDB_SCRIPT = """
import gdb
gdb.execute("set backtrace past-main on")
gdb.execute("set backtrace past-entry on")
for inferior in gdb.inferiors():
    for thread in inferior.threads():
        thread.switch()
        frame = gdb.newest_frame()
        while frame is not None:
            # Inline and tail-call frames are gdb's reconstruction from debug info, not frames on the stack.
            if frame.type() not in (gdb.INLINE_FRAME, gdb.TAILCALL_FRAME):
                print("FRAME", thread.ptid[1], frame.pc(), frame.name())
            frame = frame.older()
"""


def capture(pid: int):
    """({tid: walk} for every thread, all stopped at once; [(start, end, module path, bias)] of its code)."""
    arch = process_arch(pid)
    proc = attach(pid, arch)
    try:
        maps = proc.maps()
        modules = loaded_modules(pid, maps, proc.mem).modules
        code, tables, places = CodeMap(arch), {}, []
        for m in maps:
            if not m.executable:
                continue
            # by path: a module's range may enclose other mappings (the vdso lies between ld.so's parts)
            module = next((mod for mod in modules if mod.path == m.path), None)
            if module is not None:
                if module.path not in tables:
                    tables[module.path] = CallFrameTable.from_path(module_file(pid, module))
                code.add(m.start, m.end, tables[module.path], module.bias)
                places.append((m.start, m.end, module.path, module.bias))
            elif m.path == "[vdso]":
                vdso = CallFrameTable.from_memory(proc.mem.read, m.start, m.end - m.start)
                code.add(m.start, m.end, vdso, vdso.load_bias)
                places.append((m.start, m.end, m.path, vdso.load_bias))
                vdso_code = (m.start, proc.mem.read(m.start, m.end - m.start))
                ranges = vdso.fde_ranges()   # its CFI, read from the process's memory, covers its functions
                assert all(code.find_rule(vdso.load_bias + start) is not None for start, _ in ranges)
                # x86-64's vdso has CFI; aarch64's (Debian 12's kernel) has none: its sigreturn trampoline
                # is known by its bytes alone
                assert ranges or ARCH == "aarch64"
                tramp = vdso_code[1].find(arch.sigreturn_code)
                assert (tramp >= 0) == (ARCH == "aarch64")
                if tramp >= 0:
                    assert code.find_rule(m.start + tramp) is SIGRETURN
            else:
                code.add(m.start, m.end, None)
        index = MapIndex(maps)
        proc.stop_all()
        walks = {}
        for tid in sorted(proc.threads.tracees):
            regs = P.get_regs(tid, arch.regs_type)
            sp = arch.sp(regs)
            # the stack as the activeness snapshot reads it: up to the end of its mapping, or below the
            # thread pointer where that bounds the frames (x86-64's TCB at the top of a thread's stack)
            end = min(index.find(sp).end, sp + MAX_STACK_SCAN, arch.thread_view(regs)[2])
            stack = proc.mem.read_available(sp, end - sp)
            walks[tid] = unwind(arch, regs, stack_reader(stack, sp), code.find_rule)
        proc.resume_all()
    finally:
        proc.close()
    return walks, places


def names(walk, places, symbols: dict) -> list[tuple[str, str]]:
    """(module basename, function) of each frame; SIGNAL for a signal trampoline frame."""
    out = []
    for i, frame in enumerate(walk.frames):
        place = next((p for p in places if p[0] <= frame.pc < p[1]), None)
        if frame.signal:
            out.append((os.path.basename(place[2]) if place else "?", SIGNAL))
            continue
        if place is None or place[2] == "[vdso]":
            out.append((place[2] if place else "?", hex(frame.pc)))
            continue
        _, _, path, bias = place
        if path not in symbols:
            symbols[path] = load_symbol_table(path)
        # a return address may follow the function's last call: name the instruction before it
        lookup = frame.pc if i == 0 or walk.frames[i - 1].signal else frame.pc - 1
        sym = symbols[path].at(lookup - bias)
        out.append((os.path.basename(path), sym.name if sym else hex(frame.pc)))
    return out


def thread_names(pid: int) -> dict[int, str]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            out[int(tid)] = f.read().strip()
    return out


def test_every_thread_unwinds_to_its_outermost_frame(build, spawn):
    binary = build(STACKS)
    t = spawn(binary)
    walks, places = capture(t.pid)
    program = os.path.basename(os.path.realpath(binary))
    who = thread_names(t.pid)
    symbols: dict = {}
    seen = set()
    for tid, walk in walks.items():
        role = "main" if tid == t.pid else who[tid]
        chain = names(walk, places, symbols)
        assert walk.reliable and walk.end == OUTERMOST, (role, walk.why(), chain)
        own = [f for m, f in chain if m == program or f == SIGNAL]
        assert own == EXPECTED[role], (role, chain)
        if role != "main":
            assert chain[0][0] != program, (role, chain)     # blocked in a libc system call wrapper
        if SIGNAL in own:   # the trampoline: glibc's __restore_rt on x86-64, the vdso's on aarch64
            assert next(m for m, f in chain if f == SIGNAL) == ("libc.so.6" if ARCH == "x86_64" else "[vdso]")
        seen.add(role)
    assert seen == set(EXPECTED)
    assert t.alive() and t.ask("threads").split()[1::2] == ["sleeper", "reader", "sigsleep", "sigspin", "recurse"]


def gdb_frames(pid: int, script) -> dict[int, list[int]]:
    """tid -> the pcs of gdb's backtrace (real frames only)."""
    script.write_text(GDB_SCRIPT)
    r = subprocess.run(["gdb", "-nx", "-batch", "-p", str(pid), "-ex", "set debuginfod enabled off",
                        "-x", str(script)], capture_output=True, text=True, timeout=120 * TIME_SCALE)
    frames: dict[int, list[int]] = {}
    for line in r.stdout.splitlines():
        if line.startswith("FRAME "):
            _, tid, pc, _ = line.split(" ", 3)
            frames.setdefault(int(tid), []).append(int(pc))
    assert frames, f"gdb printed no frames: {r.stdout[-2000:]} {r.stderr[-2000:]}"
    return frames


def test_frames_match_gdb(build, spawn, tmp_path):
    if PREBUILT is not None:
        pytest.skip("the ARM64 guest has no gdb: the chains are checked by the test above")
    if shutil.which("gdb") is None:
        pytest.fail("gdb is not installed: add it to the apt-get line of .ci/run (the unwinder is checked "
                    "against gdb's backtraces)")
    t = spawn(build(STACKS))
    expected = gdb_frames(t.pid, tmp_path / "frames.py")
    walks, _ = capture(t.pid)
    assert set(walks) == set(expected)
    for tid, walk in walks.items():
        assert [f.pc for f in walk.frames] == expected[tid], (tid, walk.why())
