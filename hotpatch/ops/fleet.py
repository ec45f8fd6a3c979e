"""Every process of the host that maps a patch's binary: `apply --all-processes`, and `status`.

The processes are found by build-id, not by path: a binary is the same file in a container (another mount
namespace, a chroot) as outside, and another build at the same path is another binary. Each mapped file is
read once (by device and inode), through /proc/PID/map_files, which opens it as the process sees it.

The processes are shared among `--jobs` forked workers, each process in its own transaction: one that is
busy, gone or refused never stops the others, and none is left half patched.
"""

import hashlib
import json
import os
import select
import signal
import sys
import time
from dataclasses import dataclass

from hotpatch import patchfile
from hotpatch.elf import filecache
from hotpatch.elf.cfi import CallFrameTable
from hotpatch.elf.dynamic import DynamicSymbols
from hotpatch.elf.image import ElfImage
from hotpatch.elf.needed import soname_and_needed
from hotpatch.errors import HotpatchError, PatchMismatch, ProcessBusy, ProcessGone
from hotpatch.live import hostkey, records
from hotpatch.ops.apply import apply_loaded, load  # the workers' work, imported before they fork
from hotpatch.ops.revert import revert
from hotpatch.process.anon_names import kernel_names_anonymous_mappings
from hotpatch.process.attach import process_arch
from hotpatch.process.maps import read_maps
from hotpatch.process.memory import Memory
from hotpatch.process.modules import loaded_modules, module_file
from hotpatch.process.remote import FAULT_SIGNALS
from hotpatch.steps import requested

ELF_MAGIC = b"\x7fELF"
# Outcomes after which every process still running carries the patch ("done", exit 0)
CARRY = ("patched", "already patched", "exited")


def processes_mapping(build_id: str, skip: set[int]) -> list[tuple[int, str]]:
    """(pid, path as the process sees it) of every user process mapping a file with that build-id."""
    cache: dict[tuple[str, int], str | None] = {}   # (device, inode) -> build-id
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/maps") as f:
                lines = f.read().splitlines()
        except OSError:
            continue   # gone, or not ours to read
        for line in lines:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not parts[5].startswith("/") or int(parts[2], 16) != 0:
                continue
            key = (parts[3], int(parts[4]))
            if key not in cache:
                cache[key] = _build_id(pid, parts[0])
            if cache[key] == build_id:
                out.append((pid, parts[5]))
                break
    return out


def _build_id(pid: int, span: str) -> str | None:
    try:
        path = f"/proc/{pid}/map_files/{span}"
        with open(path, "rb") as f:
            if f.read(4) != ELF_MAGIC:
                return None
        return ElfImage.from_path(path).build_id
    except (OSError, HotpatchError):
        return None


def process_name(pid: int) -> str:
    """The process's command name (comm), as ps and pgrep show it."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class Progress:
    """What a caller shows while processes are worked on: the count once known, each result, the end."""

    def start(self, total: int) -> None:
        pass

    def advance(self, result: dict) -> None:
        pass

    def finish(self) -> None:
        pass


def apply_everywhere(patch_path: str, jobs: int, timeout: float, trust: str | None, name: str | None = None,
                     progress: Progress | None = None) -> dict:
    """Apply to every process mapping the patch's binary (only those named `name`, if given); a result each."""
    loaded = load(patch_path, trust)   # read, verified and parsed once: the same bytes for every process
    meta = loaded.patch.meta
    started = time.monotonic()
    targets = [(pid, path) for pid, path in processes_mapping(meta.target_build_id, {os.getpid(), os.getppid()})
               if name is None or process_name(pid) == name]
    if targets:
        _prefetch(targets[0][0])
    key = hostkey.load(create=True)   # read once for every process, not once each
    results = _run_workers([pid for pid, _ in targets], jobs,
                           lambda pid: apply_loaded(pid, loaded, timeout=timeout, key=key), "patched", progress)
    for pid, path in targets:
        results[pid]["binary"] = path
    return {"status": "done" if all(r["outcome"] in CARRY for r in results.values())
            else "some failed", "patch": os.path.basename(patch_path), "build_id": meta.target_build_id,
            "signed_by": loaded.signer, "processes": [results[pid] for pid, _ in targets], "summary": _tally(results),
            "seconds": round(time.monotonic() - started, 3)}


def _prefetch(pid: int) -> None:
    """Parse, before the workers fork, what each would parse on its first process: the dynamic symbols,
    dynamic sections and call frame information of the modules `pid` maps (elf/filecache.py), import
    its architecture's code and ask what the kernel supports. Every worker then starts warm. Read only;
    what fails here is left to the workers, which report it."""
    kernel_names_anonymous_mappings()
    try:
        process_arch(pid)
        maps = read_maps(pid)
        mem = Memory(pid, writable=False)
    except HotpatchError:
        return
    try:
        for m in loaded_modules(pid, maps, mem).modules:
            path = module_file(pid, m)
            for parse in (DynamicSymbols.from_path, soname_and_needed):
                try:
                    filecache.parsed(path, parse)
                except HotpatchError:
                    pass
            try:
                filecache.parsed(path, CallFrameTable.from_path).prepare()
            except HotpatchError:
                pass
    except HotpatchError:
        pass
    finally:
        mem.close()


def _tally(results: dict[int, dict]) -> dict[str, int]:
    """How many processes had each outcome."""
    summary: dict[str, int] = {}
    for r in results.values():
        summary[r["outcome"]] = summary.get(r["outcome"], 0) + 1
    return summary


@dataclass
class _Worker:
    child: int           # the worker's pid
    tasks: int           # write end: a target pid per line
    current: int | None  # the target it works on
    pending: bytes       # a result line not complete yet
    closed: bool = False   # it takes no more work (it exited)


def _run_workers(pids: list[int], jobs: int, work, done: str, progress: Progress | None = None) -> dict:
    """work(pid) for each pid, in `jobs` long-lived forked workers; a result per pid ("done" outcome on
    success).

    A worker is a tracer like a single apply's executor, and keeps what it parsed (the patch, the files of
    the processes' modules: elf/filecache.py) from one process to the next: that is what makes one more
    process cost a few milliseconds. Each process is still its own transaction. A worker that dies is
    replaced, and the process it had is reported with how it died. A termination request stops giving out
    processes, is relayed to the workers (each rolls its transaction back), and the rest are reported as
    not attempted.
    """
    results: dict[int, dict] = {}
    pending = list(pids)
    workers: dict[int, _Worker] = {}   # result read end -> worker
    relayed, started = False, 0
    if progress is not None:
        progress.start(len(pids))

    def finish(result: dict) -> None:
        results[result["pid"]] = result
        if progress is not None:
            progress.advance(result)

    try:
        while pending or any(w.current is not None for w in workers.values()):
            if requested() is not None and not relayed:
                relayed = True
                name = signal.Signals(requested()).name
                under_way = [w for w in workers.values() if w.current is not None]
                _notice(f"{name}: {len(under_way)} process(es) under way finish or roll back, "
                        f"{len(pending)} not attempted")
                for pid in pending:
                    finish({"pid": pid, "outcome": "not attempted",
                            "message": f"interrupted by {name} before its turn"})
                pending.clear()
                for w in under_way:
                    _signal(w.child, signal.SIGTERM)
            idle = [w for w in workers.values() if w.current is None and not w.closed]
            while len(pending) > len(idle) and len(workers) < max(jobs, 1) and started < len(pids) + jobs:
                fd, worker = _start_worker(workers, work, done)
                workers[fd] = worker
                idle.append(worker)
                started += 1
            if pending and not idle and not workers:   # every worker died before taking a process
                for pid in pending:
                    finish({"pid": pid, "outcome": "failed", "message": "no worker could be started for it"})
                pending.clear()
            for w in idle:
                if not pending or requested() is not None:
                    break
                pid = pending.pop(0)
                try:
                    _write_all(w.tasks, f"{pid}\n".encode())
                except OSError:   # it has exited (its end of file is read below): the process goes to another
                    pending.insert(0, pid)
                    w.closed = True
                    continue
                w.current = pid
            ready, _, _ = select.select(list(workers), [], [], 0.5)
            for fd in ready:
                w = workers[fd]
                chunk = os.read(fd, 65536)
                if not chunk:   # the worker is gone
                    del workers[fd]
                    os.close(fd)
                    os.close(w.tasks)
                    _, status = os.waitpid(w.child, 0)
                    if w.current is not None:
                        finish(_died(w.current, status))
                    continue
                w.pending += chunk
                while b"\n" in w.pending:
                    line, w.pending = w.pending.split(b"\n", 1)
                    finish(json.loads(line))
                    w.current = None
    finally:
        for fd, w in workers.items():   # no more work: each worker reads EOF and exits
            os.close(w.tasks)
            os.close(fd)
        for w in workers.values():
            os.waitpid(w.child, 0)
        if progress is not None:
            progress.finish()
    return results


def _start_worker(workers: dict[int, _Worker], work, done: str) -> tuple[int, _Worker]:
    task_r, task_w = os.pipe()
    result_r, result_w = os.pipe()
    child = os.fork()
    if child == 0:
        for fd, w in workers.items():   # the other workers' pipes: their EOF must not wait on this one
            os.close(fd)
            os.close(w.tasks)
        os.close(task_w)
        os.close(result_r)
        _serve(task_r, result_w, work, done)   # never returns
    os.close(task_r)
    os.close(result_w)
    return result_r, _Worker(child, task_w, None, b"")


def _serve(tasks: int, results: int, work, done: str) -> None:
    """A forked worker: for each target pid read from `tasks`, its result as one JSON line on `results`."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent relays requests as SIGTERM
        with os.fdopen(tasks, "rb") as lines:
            for line in lines:
                pid = int(line)
                _write_all(results, (json.dumps(_outcome(pid, work, done)) + "\n").encode())
                if requested() is not None:
                    break
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _outcome(pid: int, work, done: str) -> dict:
    try:
        report = work(pid)
        return {"pid": pid, "outcome": done, "id": report.get("id"), "stop_ms": _stop_ms(report),
                "message": "; ".join(report.get("warnings", []))}
    except ProcessBusy as e:
        return {"pid": pid, "outcome": "busy", "message": e.line()}
    except PatchMismatch as e:
        outcome = "already patched" if "already applied" in e.message else "failed"
        return {"pid": pid, "outcome": outcome, "message": e.line()}
    except ProcessGone as e:
        ended = _ended(pid)
        if ended == "exited":   # it exited meanwhile: no code of it is left to patch
            return {"pid": pid, "outcome": "exited", "message": e.line()}
        message = f"{e.line()} ({ended} during its transaction)" if ended else e.line()
        return {"pid": pid, "outcome": "failed", "message": message, "exit_code": e.exit_code}
    except HotpatchError as e:   # an undo that failed included, whatever became of the process
        return {"pid": pid, "outcome": "failed", "message": e.line(), "exit_code": e.exit_code}
    except Exception as e:   # a bug on one process: reported, the others go on
        return {"pid": pid, "outcome": "failed", "message": f"internal error: {type(e).__name__}: {e}"}


def _ended(pid: int) -> str | None:
    """None while the process runs; "exited" when it is gone, or a zombie that exited or was killed;
    "died of SIGSEGV" (or another fault signal) when that is what ended it: that is no ordinary exit."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return "exited"   # reaped already: how it ended is not known here
    if not fields or fields[0] not in (b"Z", b"X"):
        return None
    status = int(fields[49]) if len(fields) > 49 else 0   # exit_code (field 52): its wait status
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in FAULT_SIGNALS:
        return f"died of {signal.Signals(os.WTERMSIG(status)).name}"
    return "exited"


def _notice(line: str) -> None:
    """A line on stderr while the work goes on (the report comes at the end, on stdout)."""
    try:
        sys.stderr.write(f"hotpatch: {line}\n")
        sys.stderr.flush()
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _died(pid: int, status: int) -> dict:
    how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else \
        f"exit {os.waitstatus_to_exitcode(status)}"
    return {"pid": pid, "outcome": "failed", "message": f"its worker ended without a result ({how}): "
            "`hotpatch list PID` shows the process's state, the next run completes what was left"}


def _stop_ms(report: dict) -> float | None:
    t = report.get("timings_ms", {})
    return round(t["resumed"] - t["stopping"], 3) if "resumed" in t and "stopping" in t else None


def revert_everywhere(patch: str, jobs: int, timeout: float, data: bytes | None = None,
                      progress: Progress | None = None) -> dict:
    """Revert a patch (a patch file, its bytes, or the name it was applied under) in every process carrying it."""
    if data is None and os.path.isfile(patch):
        data = patchfile.read_bytes(patch)
    sha = hashlib.sha256(data).hexdigest() if data is not None else None
    name = os.path.basename(patch)
    carriers = {c["pid"]: c["id"] for c in status()["carried"]
                if (sha is not None and c["sha256"] == sha) or c["patch"] == name}
    started = time.monotonic()
    if carriers:
        _prefetch(min(carriers))
    key = hostkey.load()   # read once for every process, not once each
    results = _run_workers(sorted(carriers), jobs,
                           lambda pid: revert(pid, carriers[pid], timeout=timeout, key=key), "reverted", progress)
    return {"status": "done" if all(r["outcome"] in ("reverted", "exited") for r in results.values())
            else "some failed", "patch": name, "processes": [results[p] for p in sorted(carriers)],
            "summary": _tally(results),
            "seconds": round(time.monotonic() - started, 3)}


def status(patch: str | None = None) -> dict:
    """Host-wide: which processes carry which patches, and which map a patched binary without the patch;
    with `patch` (a patch file), only that patch, and every process mapping its binary without it."""
    if patch is not None:
        data = patchfile.read_bytes(patch)
        meta = patchfile.decode(data, patch).meta
        sha = hashlib.sha256(data).hexdigest()
        full = status()
        carried = [c for c in full["carried"] if c["sha256"] == sha]
        pids = {c["pid"] for c in carried}
        missing = [{"pid": pid, "patch": os.path.basename(patch), "binary": path, "why": "not applied to it"}
                   for pid, path in processes_mapping(meta.target_build_id, {os.getpid(), os.getppid()} | pids)]
        return {"status": "ok", "carried": carried, "missing": missing}
    key = hostkey.load()
    carried, by_build = [], {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            maps = read_maps(pid)
            if not any(m.anonymous and m.perms.startswith("r-") and m.offset == 0 for m in maps):
                continue
            mem = Memory(pid, writable=False)
        except HotpatchError:
            continue
        try:
            for r in records.find_records(maps, mem, pid, key):
                if r.retired:
                    continue
                carried.append({"pid": pid, "id": r.id, "patch": r.patch, "sha256": r.patch_sha256, "module": r.module,
                                "build_id": r.build_id, "authentic": r.authentic,
                                "functions": [f.name for f in r.functions]})
                by_build.setdefault((r.build_id, r.patch_sha256), (r.patch, set()))[1].add(pid)
        except HotpatchError:
            continue
        finally:
            mem.close()
    missing = []
    for (build_id, _sha), (patch, pids) in by_build.items():
        for pid, path in processes_mapping(build_id, {os.getpid()} | pids):
            missing.append({"pid": pid, "patch": patch, "binary": path,
                            "why": "not applied to it (started after, or refused)"})
    return {"status": "ok", "carried": carried, "missing": missing}
