"""A return breakpoint's trap that arrives after its catch was given up (the thread hit it just as the
wait for it ended) is known by the cookie its perf event carries and never delivered: SIGTRAP would
kill the process. The thread goes on, its breakpoints still work (AArch64 steps a thread over a perf
breakpoint: a continue instead of that step would leave them off), and after detach nothing is left."""

import time

import pytest
from elftools.elf.elffile import ELFFile
from harness import TIME_SCALE, Program

from hotpatch.process.attach import attach, process_arch

pytestmark = pytest.mark.arm64

WORKER = Program("gate.c", "-no-pie")   # gated() at its link-time address


def symbol(exe: str, name: str) -> int:
    with open(exe, "rb") as f:
        return ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]["st_value"]


def task_state(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def test_a_late_trap_is_never_delivered(build, spawn):
    exe = build(WORKER)
    t = spawn(exe)
    proc = attach(t.pid, process_arch(t.pid))
    try:
        proc.stop_all()
        worker = next(tid for tid in proc.thread_ids() if tid != t.pid)
        assert proc.catch(worker, symbol(exe, "gated"))
        tracee = proc.threads.tracees[worker]
        assert tracee.catch_fd is not None, "no perf breakpoint: the kernel refused perf_event_open"
        tracee.watch = None        # given up while the event stands: its next hit is a late one
        proc.resume_all()
        assert t.ask("open") == "ok"   # gated() returns, is called again and hits the breakpoint
        deadline = time.monotonic() + 10 * TIME_SCALE
        while task_state(t.pid, worker) != "t":   # held in its SIGTRAP's signal-delivery-stop
            assert time.monotonic() < deadline, task_state(t.pid, worker)
            time.sleep(0.01)
        passed = proc.threads.signals_passed
        proc.stop_all()            # takes the stop: the trap is swallowed, not passed on
        assert proc.threads.signals_passed == passed
        tracee.watch = 0
        proc.release_catch(worker)

        assert proc.catch(worker, symbol(exe, "gated"))    # a second breakpoint in the same thread fires
        proc.resume_all()
        assert t.ask("open") == "ok"
        assert proc.wait_caught(worker, time.monotonic() + 10 * TIME_SCALE)
        proc.stop_all()
        proc.release_catch(worker)
    finally:
        proc.close()
    assert t.ask("open") == "ok"
    deadline = time.monotonic() + 10 * TIME_SCALE
    while (got := t.ask("passes")) != "3 0":
        assert time.monotonic() < deadline, got
        time.sleep(0.01)
    assert t.alive() and t.status("TracerPid") == "0"
