"""list: the patches applied to a process, read from the process itself (no thread is stopped)."""

from hotpatch.live import records
from hotpatch.process.attach import check_pid
from hotpatch.process.maps import read_maps
from hotpatch.process.memory import Memory


def list_patches(pid: int) -> list[dict]:
    check_pid(pid)
    mem = Memory(pid, writable=False)
    try:
        found = records.find_records(read_maps(pid), mem)
        return [{"id": r.id, "patch": r.patch, "applied_at": r.applied_at, "module": r.module,
                 "status": "retired" if r.retired else "active" if records.is_active(r, mem) else "inactive",
                 "image": {"base": hex(r.base), "size": r.size},
                 "functions": [{"name": f.name, "entry": hex(f.entry), "new": hex(f.new)}
                               for f in r.functions]} for r in found]
    finally:
        mem.close()
