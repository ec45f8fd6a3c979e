"""gc: free the images of reverted patches that were kept because something pointed into them.

The same proof as revert's: no thread frame in the image (checked with every
thread stopped), then no word of writable memory pointing into its code
(searched while the process runs).
"""

from hotpatch.errors import HotpatchError
from hotpatch.live import hostkey, perfmap, records, sandbox, transition
from hotpatch.live.transaction import say_left_parked
from hotpatch.live.undo import code_ranges, free_images
from hotpatch.live.unwinding import Stacks
from hotpatch.ops.settle import settle
from hotpatch.process.attach import attach, check_pid, process_arch
from hotpatch.process.modules import loaded_modules
from hotpatch.steps import Steps, check_interrupted


def gc(pid: int, timeout: float = 10.0) -> dict:
    steps = Steps("gc")
    check_pid(pid)
    proc = attach(pid, process_arch(pid), abort_check=check_interrupted)
    try:
        sandbox.check_process(proc)
        repaired = settle(proc, timeout)
        maps = proc.maps()
        found = records.find_records(maps, proc.mem, pid, hostkey.load())
        modules = loaded_modules(pid, maps, proc.mem).modules
        # An unverifiable record is never acted on: its image is not freed on its word.
        retired = [r for r in found if r.retired and records.verify(r, proc.arch, maps, modules) is None]
        if not retired:
            return {"status": "repaired" if repaired else "clean", "pid": pid, "freed": [], "retired": [],
                    "unfreed": [], "repaired": repaired}
        stacks = Stacks(proc, maps, modules, found)
        attempts = transition.stop_when_safe(proc, code_ranges(retired), timeout, steps, stacks)
        proc.detach_all(keep=proc.syscall_thread())
        thread_stacks = proc.stack_mappings()
        freed, kept, unfreed = free_images(proc, retired, thread_stacks, steps)
        proc.detach_all()
        warning = perfmap.update(proc.pid, records.find_records(proc.maps(), proc.mem))
        return {"status": "collected", "pid": pid, "freed": freed, "retired": kept, "unfreed": unfreed,
                "checks": attempts, "timings_ms": steps.marks, "warnings": [warning] if warning else [],
                "repaired": repaired}
    except HotpatchError as e:
        say_left_parked(proc, e)
        raise
    finally:
        proc.close()
