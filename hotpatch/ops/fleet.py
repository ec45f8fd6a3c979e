"""Every process of the host that maps a patch's binary: `apply --all-processes`, and `status`.

The processes are found by build-id, not by path: a binary is the same file in a container (another mount
namespace, a chroot) as outside, and another build at the same path is another binary. Each mapped file is
read once (by device and inode), through /proc/PID/map_files, which opens it as the process sees it.

Each process is patched by its own worker, a forked child, in its own transaction: one that is busy,
gone or refused never stops the others, and none is left half patched. `--jobs` bounds the workers.
"""

import hashlib
import json
import os
import select
import signal
import time

from hotpatch import patchfile
from hotpatch.elf.image import ElfImage
from hotpatch.errors import HotpatchError, PatchMismatch, ProcessBusy
from hotpatch.live import hostkey, records
from hotpatch.ops.apply import apply  # the workers' work, imported before they fork
from hotpatch.ops.revert import revert
from hotpatch.ops.trust import verify
from hotpatch.process.maps import read_maps
from hotpatch.process.memory import Memory

ELF_MAGIC = b"\x7fELF"


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


def apply_everywhere(patch_path: str, jobs: int, timeout: float, trust: str | None, name: str | None = None) -> dict:
    """Apply to every process mapping the patch's binary (only those named `name`, if given); a result each."""
    data = patchfile.read_bytes(patch_path)
    signer = verify(patch_path, data, trust)
    meta = patchfile.decode(data, patch_path).meta
    started = time.monotonic()
    targets = [(pid, path) for pid, path in processes_mapping(meta.target_build_id, {os.getpid(), os.getppid()})
               if name is None or process_name(pid) == name]
    results = _run_workers([pid for pid, _ in targets], jobs,
                           lambda pid: apply(pid, patch_path, timeout=timeout, trust=trust), "patched")
    for pid, path in targets:
        results[pid]["binary"] = path
    summary: dict[str, int] = {}
    for r in results.values():
        summary[r["outcome"]] = summary.get(r["outcome"], 0) + 1
    return {"status": "done" if all(r["outcome"] in ("patched", "already patched") for r in results.values())
            else "some failed", "patch": os.path.basename(patch_path), "build_id": meta.target_build_id,
            "signed_by": signer, "processes": [results[pid] for pid, _ in targets], "summary": summary,
            "seconds": round(time.monotonic() - started, 3)}


def _run_workers(pids: list[int], jobs: int, work, done: str) -> dict:
    """work(pid) for each pid in a forked worker, `jobs` at once; a result per pid ("done" outcome on success)."""
    results: dict[int, dict] = {}
    pending, running = list(pids), {}   # read end -> (pid, worker, chunks)
    while pending or running:
        while pending and len(running) < max(jobs, 1):
            pid = pending.pop(0)
            r, w = os.pipe()
            worker = os.fork()
            if worker == 0:
                os.close(r)
                _worker(pid, w, lambda pid=pid: work(pid), done)
            os.close(w)
            running[r] = (pid, worker, [])
        ready, _, _ = select.select(list(running), [], [], 1.0)
        for r in ready:
            chunk = os.read(r, 65536)
            if chunk:
                running[r][2].append(chunk)
                continue
            pid, worker, chunks = running.pop(r)
            os.close(r)
            _, status = os.waitpid(worker, 0)
            results[pid] = _result(pid, b"".join(chunks), status)
    return results


def _worker(pid: int, w: int, work, done: str) -> None:
    """A forked child: the work on one process, its result as one JSON line on `w`."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent relays requests as SIGTERM
        try:
            report = work()
            result = {"pid": pid, "outcome": done, "id": report.get("id"), "stop_ms": _stop_ms(report),
                      "message": "; ".join(report.get("warnings", []))}
        except ProcessBusy as e:
            result = {"pid": pid, "outcome": "busy", "message": e.line()}
        except PatchMismatch as e:
            outcome = "already patched" if "already applied" in e.message else "failed"
            result = {"pid": pid, "outcome": outcome, "message": e.line()}
        except HotpatchError as e:
            result = {"pid": pid, "outcome": "failed", "message": e.line(), "exit_code": e.exit_code}
        except Exception as e:   # a bug in one worker: reported, the others go on
            result = {"pid": pid, "outcome": "failed", "message": f"internal error: {type(e).__name__}: {e}"}
        os.write(w, json.dumps(result).encode())
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _result(pid: int, data: bytes, status: int) -> dict:
    try:
        return json.loads(data)
    except ValueError:
        how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else \
            f"exit {os.waitstatus_to_exitcode(status)}"
        return {"pid": pid, "outcome": "failed", "message": f"its worker ended without a result ({how}): "
                "`hotpatch list PID` shows the process's state, the next run completes what was left"}


def _stop_ms(report: dict) -> float | None:
    t = report.get("timings_ms", {})
    return round(t["resumed"] - t["stopping"], 3) if "resumed" in t and "stopping" in t else None


def revert_everywhere(patch: str, jobs: int, timeout: float, data: bytes | None = None) -> dict:
    """Revert a patch (a patch file, its bytes, or the name it was applied under) in every process carrying it."""
    if data is None and os.path.isfile(patch):
        data = patchfile.read_bytes(patch)
    sha = hashlib.sha256(data).hexdigest() if data is not None else None
    name = os.path.basename(patch)
    carriers = {c["pid"]: c["id"] for c in status()["carried"]
                if (sha is not None and c["sha256"] == sha) or c["patch"] == name}
    started = time.monotonic()
    results = _run_workers(sorted(carriers), jobs,
                           lambda pid: revert(pid, carriers[pid], timeout=timeout), "reverted")
    summary: dict[str, int] = {}
    for r in results.values():
        summary[r["outcome"]] = summary.get(r["outcome"], 0) + 1
    return {"status": "done" if all(r["outcome"] == "reverted" for r in results.values()) else "some failed",
            "patch": name, "processes": [results[p] for p in sorted(carriers)], "summary": summary,
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
