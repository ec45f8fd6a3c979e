"""gc: free the images of reverted patches that were kept because something pointed into them.

The same proof as revert's: no thread frame in the image (checked with every
thread stopped), then no word of writable memory pointing into its code
(searched while the process runs).
"""

from hotpatch.live import perfmap, records, sandbox, transition
from hotpatch.ops.revert import code_ranges, free_images
from hotpatch.process.attach import attach, check_pid, process_arch
from hotpatch.steps import Steps, check_interrupted


def gc(pid: int, timeout: float = 10.0) -> dict:
    steps = Steps("gc")
    check_pid(pid)
    proc = attach(pid, process_arch(pid), abort_check=check_interrupted)
    try:
        sandbox.check_process(proc)
        retired = [r for r in records.find_records(proc.maps(), proc.mem) if r.retired]
        if not retired:
            return {"status": "clean", "pid": pid, "freed": [], "retired": [], "unfreed": []}
        attempts = transition.stop_when_safe(proc, code_ranges(retired), timeout, steps)
        thread_stacks = proc.stack_mappings()
        proc.detach_all(keep=proc.syscall_thread())
        freed, kept, unfreed = free_images(proc, retired, thread_stacks, steps)
        proc.detach_all()
        warning = perfmap.update(proc.pid, records.find_records(proc.maps(), proc.mem))
        return {"status": "collected", "pid": pid, "freed": freed, "retired": kept, "unfreed": unfreed,
                "checks": attempts, "timings_ms": steps.marks, "warnings": [warning] if warning else []}
    finally:
        proc.close()
