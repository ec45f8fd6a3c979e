"""`apply --all-processes`: every process mapping the patch's binary (by build-id), each in its own
transaction, concurrently; one that is busy or already patched does not stop the others; a process of
another binary is left alone. Exit 0 when all are patched, 10 when some are not, with the reason each."""

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
from harness import ROOT, TIME_SCALE, Patch, Program, children_of, hotpatch, hotpatch_popen

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
OTHER = Program("target.c", "-fPIE", "-pie", "-O1")   # same source, another build (another build-id)
FIX = Patch("patch_target.c", TARGET)
MEMBER = Program("busy.c", "-fPIE", "-pie", "-pthread")   # "idle": patchable; else a thread parks in work()
WORK_FIX = Patch("patch_work.c", MEMBER)


def test_every_process_of_the_binary(build, spawn):
    ts = [spawn(build(TARGET)) for _ in range(5)]
    other = spawn(build(OTHER))
    assert hotpatch(str(ts[0].pid), build(FIX)).returncode == 0      # one has it already
    r = hotpatch("apply", "--all-processes", build(FIX), "--jobs", "3", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    outcomes = {p["pid"]: p["outcome"] for p in report["processes"]}
    assert outcomes == {ts[0].pid: "already patched", **{t.pid: "patched" for t in ts[1:]}}, outcomes
    assert all(t.ask("compute 5") == "51" for t in ts)
    assert other.ask("compute 5") == "11" and other.status("TracerPid") == "0"
    r = hotpatch("apply", "--all-processes", build(FIX))
    assert r.returncode == 0 and "5 already patched" in r.stdout, r.stdout + r.stderr


def test_some_not_patched_exit_10(build, spawn, tmp_path):
    """One process whose code someone else changed is refused (its reason given); the others are patched."""
    good, changed = spawn(build(TARGET)), spawn(build(TARGET))
    entry = changed.symbol_address(build(TARGET), "compute")
    with open(f"/proc/{changed.pid}/mem", "r+b") as mem:   # a debugger's breakpoint, say
        mem.seek(entry + 1)
        mem.write(b"\xcc")
    r = hotpatch("apply", "--all-processes", build(FIX), "--json")
    assert r.returncode == 10, r.stdout + r.stderr
    outcomes = {p["pid"]: p for p in json.loads(r.stdout)["processes"]}
    assert outcomes[good.pid]["outcome"] == "patched" and good.ask("compute 5") == "51"
    assert outcomes[changed.pid]["outcome"] == "failed" and "differs" in outcomes[changed.pid]["message"]
    assert changed.status("TracerPid") == "0"
    r = hotpatch("apply", "--all-processes", str(tmp_path / "missing.hp"))
    assert r.returncode == 6 and "missing.hp" in r.stderr


def test_status_host_wide(build, spawn):
    """status: the processes that carry a patch, and those that map its binary without it."""
    carrier, bare = spawn(build(TARGET)), spawn(build(TARGET))
    assert hotpatch(str(carrier.pid), build(FIX)).returncode == 0
    r = hotpatch("status", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [(c["pid"], c["id"]) for c in report["carried"] if c["pid"] in (carrier.pid, bare.pid)] == \
        [(carrier.pid, 1)]
    assert [m["pid"] for m in report["missing"] if m["pid"] in (carrier.pid, bare.pid)] == [bare.pid]
    assert bare.status("TracerPid") == "0" and carrier.status("TracerPid") == "0"   # read only


def test_revert_everywhere(build, spawn):
    ts = [spawn(build(TARGET)) for _ in range(3)]
    assert hotpatch("apply", "--all-processes", build(FIX)).returncode == 0
    assert all(t.ask("compute 5") == "51" for t in ts)
    r = hotpatch("revert", "--all-processes", build(FIX), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p["pid"] for p in json.loads(r.stdout)["processes"]) == sorted(t.pid for t in ts)
    assert all(t.ask("compute 5") == "11" for t in ts)
    r = hotpatch("revert", "--all-processes", build(FIX))
    assert r.returncode == 0 and "no process carries it" in r.stdout


def test_selected_by_name(build, spawn, tmp_path):
    """--name: only the processes of that name among those mapping the binary (a copy of the program under
    another name maps the same binary)."""
    renamed = str(tmp_path / "billing")
    shutil.copy(build(TARGET), renamed)
    plain, billing = spawn(build(TARGET)), spawn(renamed)
    r = hotpatch("apply", "--all-processes", build(FIX), "--name", "billing", "--json")
    assert r.returncode == 0, r.stderr
    assert [p["pid"] for p in json.loads(r.stdout)["processes"]] == [billing.pid]
    assert billing.ask("compute 5") == "51" and plain.ask("compute 5") == "11"


def test_twenty_processes_some_busy_one_exiting(build, spawn):
    """20 processes of one binary: 16 idle are patched, 3 with a thread parked in the function are
    refused as busy (after --timeout) and left as they were, and one that exits mid-way (SIGKILLed while
    its transaction is held with the image mapped in it) is reported as exited; exit 10 for the busy ones."""
    idle = [spawn([build(MEMBER), "idle"]) for _ in range(16)]
    busy = [spawn(build(MEMBER)) for _ in range(3)]
    leaving = spawn([build(MEMBER), "idle"])
    p = hotpatch_popen("apply", "--all-processes", build(WORK_FIX), "--timeout", str(1 * TIME_SCALE), "--json",
                       env={"HOTPATCH_PAUSE_AT": "apply:mapped", "HOTPATCH_PAUSE_PID": str(leaving.pid)})
    try:
        assert p.stderr.readline().strip() == "hotpatch: paused at apply:mapped"
        os.kill(leaving.pid, signal.SIGKILL)
        while _state(leaving.pid) not in ("Z", "gone"):   # its tracer (the held worker) reaps it later
            time.sleep(0.01)
        p.stdin.write("\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=120 * TIME_SCALE)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 10, out + err
    report = json.loads(out)
    outcomes = {r["pid"]: r["outcome"] for r in report["processes"]}
    assert outcomes == {**{t.pid: "patched" for t in idle}, **{t.pid: "busy" for t in busy},
                        leaving.pid: "exited"}, report
    assert report["summary"] == {"patched": 16, "busy": 3, "exited": 1}
    assert all(t.ask("work 5") == "1005" for t in idle)
    assert all(t.ask("work 5") == "6" and t.status("TracerPid") == "0" for t in busy)
    r = hotpatch("list", str(busy[0].pid), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["patches"] == [], r.stdout   # nothing left behind


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_progress_on_a_terminal(build, spawn):
    """On a terminal, a progress bar (tqdm) on stderr while processes are patched, gone at the end; never
    with --json, nor when stderr is not a terminal."""
    ts = [spawn(build(TARGET)) for _ in range(3)]
    shown = _on_terminal("apply", "--all-processes", build(FIX))
    assert "patching" in shown and "/3 [" in shown, shown
    assert all(t.ask("compute 5") == "51" for t in ts)
    shown = _on_terminal("revert", "--all-processes", build(FIX), "--json")
    assert "reverting" not in shown and "/3 [" not in shown, shown
    assert all(t.ask("compute 5") == "11" for t in ts)
    r = hotpatch("apply", "--all-processes", build(FIX))   # stderr a pipe: no bar
    assert r.returncode == 0 and r.stderr == "", r.stderr


def _on_terminal(*args: str) -> str:
    """Run the CLI with stderr on a pseudo-terminal; what the terminal showed (it must exit 0)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))   # a terminal's size
    p = subprocess.Popen([sys.executable, "-m", "hotpatch", *args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=slave, cwd=ROOT)
    os.close(slave)
    shown = b""
    while True:   # drained as it comes: a full terminal buffer would hold the CLI
        ready, _, _ = select.select([master], [], [], 60 * TIME_SCALE)
        assert ready, "no output and no exit from the CLI within a minute"
        try:
            chunk = os.read(master, 4096)
        except OSError:   # EIO: every holder of the terminal has closed it
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out = p.communicate(timeout=60 * TIME_SCALE)[0]
    assert p.returncode == 0, shown.decode(errors="replace") + out.decode(errors="replace")
    return shown.decode(errors="replace")


def _held(*args: str, pid: int):
    """apply --all-processes with one worker, held with the image mapped in process `pid` (its first)."""
    p = hotpatch_popen("apply", "--all-processes", *args, "--jobs", "1", "--json",
                       env={"HOTPATCH_PAUSE_AT": "apply:mapped", "HOTPATCH_PAUSE_PID": str(pid)})
    assert p.stderr.readline().strip() == "hotpatch: paused at apply:mapped"
    return p


def _finish(p) -> tuple[int, dict, str]:
    try:
        out, err = p.communicate(timeout=120 * TIME_SCALE)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, json.loads(out), err


def test_interrupted_midway(build, spawn):
    """SIGTERM while one process's transaction is under way: it rolls back, the rest are not attempted, a
    line says so at once; nothing is left patched or half patched."""
    ts = sorted((spawn(build(TARGET)) for _ in range(4)), key=lambda t: t.pid)   # taken in pid order
    p = _held(build(FIX), pid=ts[0].pid)
    p.send_signal(signal.SIGTERM)
    assert p.stderr.readline().strip() == "hotpatch: SIGTERM: 1 process(es) under way finish or roll back, " \
        "3 not attempted"
    p.stdin.write("\n")
    p.stdin.flush()
    code, report, err = _finish(p)
    assert code == 10, err
    outcomes = {r["pid"]: (r["outcome"], r["message"]) for r in report["processes"]}
    assert outcomes[ts[0].pid] == ("failed", "interrupted by SIGTERM"), outcomes
    assert all(outcomes[t.pid][0] == "not attempted" for t in ts[1:]), outcomes
    for t in ts:
        assert t.ask("compute 5") == "11" and t.status("TracerPid") == "0"
        assert t.images() == []


def test_worker_killed(build, spawn):
    """A worker killed (SIGKILL) in the middle of a process: that process is reported with how its worker
    died, a new worker patches the rest; the next run on the process frees what was left in it."""
    ts = sorted((spawn(build(TARGET)) for _ in range(3)), key=lambda t: t.pid)
    p = _held(build(FIX), pid=ts[0].pid)
    executor, = children_of(p.pid)
    worker, = children_of(executor)
    os.kill(worker, signal.SIGKILL)
    code, report, err = _finish(p)
    assert code == 10, err
    outcomes = {r["pid"]: r for r in report["processes"]}
    assert outcomes[ts[0].pid]["outcome"] == "failed", outcomes
    assert "its worker ended without a result (killed by signal 9)" in outcomes[ts[0].pid]["message"]
    assert [outcomes[t.pid]["outcome"] for t in ts[1:]] == ["patched", "patched"]
    assert ts[0].ask("compute 5") == "11" and all(t.ask("compute 5") == "51" for t in ts[1:])
    r = hotpatch("list", str(ts[0].pid), "--json")
    assert r.returncode == 0, r.stderr
    assert ts[0].images() == [] and ts[0].status("TracerPid") == "0"
    assert hotpatch(str(ts[0].pid), build(FIX)).returncode == 0 and ts[0].ask("compute 5") == "51"


def test_how_a_process_ended():
    """A process gone during its transaction counts as done only if it exited or was killed; one that died
    of a fault signal (possibly of our doing) is a failure. Read from a real zombie's exit status."""
    import resource

    from hotpatch.ops.fleet import _ended
    children = {}
    for how in ("exit", "kill", "segv"):
        pid = os.fork()
        if pid == 0:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if how == "segv":
                signal.signal(signal.SIGSEGV, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGSEGV)
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(3)
        children[how] = pid
    try:
        for pid in children.values():   # each a zombie now (not reaped yet): its exit status is readable
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        assert _ended(children["exit"]) == "exited"
        assert _ended(children["kill"]) == "exited"
        assert _ended(children["segv"]) == "died of SIGSEGV"
        assert _ended(os.getpid()) is None
    finally:
        for pid in children.values():
            os.waitpid(pid, 0)
    assert _ended(children["exit"]) == "exited"   # reaped: gone
