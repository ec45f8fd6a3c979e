"""list: the patches applied to a process, read from the process itself.

No thread is stopped, unless an interrupted run left something to repair:
then list, like any later run, repairs it first (ops/settle.py).
"""

from hotpatch.errors import HotpatchError
from hotpatch.live import hostkey, records, sandbox
from hotpatch.ops.settle import settle
from hotpatch.process import inflight
from hotpatch.process.attach import attach, check_pid, process_arch
from hotpatch.process.maps import read_maps
from hotpatch.process.memory import Memory
from hotpatch.process.modules import loaded_modules
from hotpatch.steps import check_interrupted


def repair_if_interrupted(pid: int, timeout: float = 10.0) -> tuple[list[str], str | None]:
    """(what was repaired, why a repair could not be made) when an interrupted run left a sign;
    ([], None) at once for a process with none, which stays untouched."""
    check_pid(pid)
    if not _signs_of_an_interrupted_run(pid):
        return [], None
    try:
        proc = attach(pid, process_arch(pid), abort_check=check_interrupted)
        try:
            sandbox.check_process(proc)
            return settle(proc, timeout), None
        finally:
            proc.close()
    except HotpatchError as e:
        return [], e.line()


def _signs_of_an_interrupted_run(pid: int) -> bool:
    marks = inflight.left_behind(pid)
    if marks is None or marks:
        return True
    arch = process_arch(pid)
    mem = Memory(pid, writable=False)
    try:
        maps = read_maps(pid)
        if records.find_pending(maps, mem):
            return True
        modules = loaded_modules(pid, maps, mem).modules
        return any(not r.retired and records.verify(r, arch, maps, modules) is None
                   and (records.interrupted(r) or records.state(r, mem) == "inactive")
                   for r in records.find_records(maps, mem, pid, hostkey.load()))
    finally:
        mem.close()


def list_patches(pid: int) -> list[dict]:
    check_pid(pid)
    arch = process_arch(pid)
    mem = Memory(pid, writable=False)
    try:
        maps = read_maps(pid)
        modules = loaded_modules(pid, maps, mem).modules
        out = []
        for r in records.find_records(maps, mem, pid, hostkey.load()):
            reason = records.verify(r, arch, maps, modules)
            status = "unverifiable" if reason else "retired" if r.retired else _status(r, mem)
            out.append({"id": r.id, "patch": r.patch, "applied_at": r.applied_at, "module": r.module,
                        "status": status, **({"unverifiable": reason} if reason else {}),
                        "image": {"base": hex(r.base), "size": r.size},
                        "functions": [{"name": f.name, "entry": hex(f.entry), "new": hex(f.new)}
                                      for f in r.functions]})
        return out
    finally:
        mem.close()


def _status(record: records.PatchRecord, mem: Memory) -> str:
    """active; inactive (no jump stands: the next apply, revert or gc frees it); interrupted (a killed
    run wrote some of its sites: the next one rolls it back); modified (by someone else)."""
    state = records.state(record, mem)
    if state == "partial":
        return "interrupted" if records.interrupted(record) else "modified"
    return "active" if state == "superseded" else state


def list_pending(pid: int) -> list[dict]:
    """Images an interrupted apply mapped and never filled (the next apply, revert or gc unmaps them)."""
    mem = Memory(pid, writable=False)
    try:
        return [{"base": hex(base), "size": size} for base, size in records.find_pending(read_maps(pid), mem)]
    finally:
        mem.close()
