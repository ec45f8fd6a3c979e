"""list: the patches applied to a process, read from the process itself.

No thread is stopped, unless an interrupted run left something to repair:
then list, like any later run, repairs it first (ops/settle.py).
"""

from dataclasses import dataclass, field

from hotpatch.errors import HotpatchError
from hotpatch.live import hostkey, records, sandbox
from hotpatch.ops.settle import settle
from hotpatch.process import inflight
from hotpatch.process.attach import attach, check_pid, process_arch
from hotpatch.process.maps import read_maps
from hotpatch.process.memory import Memory
from hotpatch.process.modules import loaded_modules
from hotpatch.steps import check_interrupted


@dataclass
class Listing:
    patches: list[dict]
    pending: list[dict]        # images an interrupted apply mapped and never filled
    repaired: list[str] = field(default_factory=list)
    unrepaired: str | None = None   # why what an interrupted run left could not be repaired


def list_process(pid: int, timeout: float = 10.0) -> Listing:
    """What the process holds; read once when nothing says a run was interrupted, else repaired and read again."""
    check_pid(pid)
    listing, signs = _read(pid)
    if not signs:
        return listing
    repaired, unrepaired = _repair(pid, timeout)
    listing, _ = _read(pid)
    listing.repaired, listing.unrepaired = repaired, unrepaired
    return listing


def _repair(pid: int, timeout: float) -> tuple[list[str], str | None]:
    try:
        proc = attach(pid, process_arch(pid), abort_check=check_interrupted)
        try:
            sandbox.check_process(proc)
            return settle(proc, timeout), None
        finally:
            proc.close()
    except HotpatchError as e:
        return [], e.line()


def _read(pid: int) -> tuple[Listing, bool]:
    """(the listing, whether an interrupted run left a sign: a mark left behind, a pending image, a
    record journaled as under way or with no jump standing)."""
    marks = inflight.left_behind(pid)
    arch = process_arch(pid)
    mem = Memory(pid, writable=False)
    try:
        maps = read_maps(pid)
        modules = loaded_modules(pid, maps, mem).modules
        patches, signs = [], marks is None or bool(marks)
        found = records.find_records(maps, mem, pid, hostkey.load())
        for r in found:
            gone = records.unloaded(r, maps, modules)
            reason = records.verify_unloaded(r, maps) if gone else records.verify(r, arch, maps, modules)
            status = "unverifiable" if reason else "retired" if r.retired else "library unloaded" if gone \
                else _status(r, mem, found)
            signs = signs or (reason is None and not r.retired and not gone
                              and (records.interrupted(r) or status == "inactive"))
            patches.append({"id": r.id, "patch": r.patch, "applied_at": r.applied_at, "module": r.module,
                            "status": status, **({"unverifiable": reason} if reason else {}),
                            "image": {"base": hex(r.base), "size": r.size},
                            "functions": [{"name": f.name, "entry": hex(f.entry), "new": hex(f.new)}
                                          for f in r.functions]})
        pending = [{"base": hex(base), "size": size} for base, size in records.find_pending(maps, mem)]
        return Listing(patches, pending), signs or bool(pending)
    finally:
        mem.close()


def _status(record: records.PatchRecord, mem: Memory, found: list) -> str:
    """active; superseded by patch N (a newer patch replaced the same function again); inactive (no jump
    stands: the next run frees it); interrupted (a killed run wrote some of its sites: the next one rolls
    it back); modified (by someone else)."""
    state = records.state(record, mem)
    if state == "partial":
        return "interrupted" if records.interrupted(record) else "modified"
    if state == "superseded":
        sites = {f.site for f in record.functions}
        newer = [r.id for r in found if r.id > record.id and not r.retired and sites & {f.site for f in r.functions}]
        return f"superseded by patch {max(newer)}" if newer else "modified"
    return state
