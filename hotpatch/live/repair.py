"""What a hotpatch run killed where it could not roll back leaves in a process, found by the next run.

A SIGKILL of the executor or the OOM killer can stop a run at any instant;
what it leaves is one of these, and never a thread running on borrowed
registers or an image nobody can find:
- a thread parked in a loop, its registers and the system call it made
  journaled on its stack (process/parking.py): the registers are put back,
  and an image that call mapped is unmapped if it was never marked;
- an image mapped and marked, never filled (a pending header): unmapped;
- a record whose jumps were never written, or were all taken back
  (inactive), or only some of them (partial): ops/settle.py frees the first
  and rolls back the second, as revert would.
This module handles the first two; both need only one thread at a time.
"""

from hotpatch.errors import HotpatchError, ThreadGone
from hotpatch.live import ehframe, hostkey, records
from hotpatch.process import parking
from hotpatch.process.attach import Process
from hotpatch.process.maps import Mapping

NOT_MARKED_PROBE = 64   # bytes read at a mapping an interrupted mmap made: a header, or nothing yet


def unpark_threads(proc: Process) -> list[str]:
    """Put back every parked thread's registers; undo an mmap whose image was never marked. What was done."""
    done = []
    mmap_nr = proc.arch.syscall_numbers["mmap"]
    for tid in sorted(proc.running_threads()):   # a parked thread spins: the kernel shows it running
        if not proc.stop_thread(tid):
            continue
        try:
            found = proc.parked(tid)
        except ThreadGone:
            continue   # it ended meanwhile (SIGKILL): nothing to put back
        try:
            if found is None:
                continue
            journal, result = found
            proc.unpark(tid, journal)
            done.append(f"thread {tid} was parked by an interrupted run: its registers are restored")
            if journal.nr & parking.CALL:
                done += _frames_call_made(proc, journal.nr & ~parking.CALL, journal.args[0], result)
            elif journal.nr == mmap_nr and 0 <= result < 1 << 63:
                done += _unmap_unmarked(proc, result, journal.args[1])
        finally:
            proc.resume_thread(tid)
    return done


def _frames_call_made(proc: Process, tag: int, eh_frame: int, result: int) -> list[str]:
    """A parked thread made its (de)registration call: its record's flag must say what libgcc knows now,
    or a later free would leave libgcc reading freed memory (or deregister twice: libgcc aborts)."""
    record = next((r for r in records.find_records(proc.maps(), proc.mem, proc.pid, hostkey.load())
                   if r.eh_frame and r.eh_frame[0] == eh_frame and r.authentic), None)
    if record is None or tag not in (ehframe.REGISTER_TAG, ehframe.DEREGISTER_TAG):
        return []
    registered = tag == ehframe.REGISTER_TAG or result == 0
    if record.frames_registered != registered:
        record.frames_registered = registered
        records.write_flags(record, proc.mem)
    return [f"the unwind information of patch {record.id} is {'registered' if registered else 'deregistered'}"]


def _unmap_unmarked(proc: Process, base: int, length: int) -> list[str]:
    """The mapping an interrupted mmap made, if it is still exactly that and bears no header yet."""
    size = (length + proc.page_size - 1) // proc.page_size * proc.page_size
    maps = proc.maps()
    if records.image_span_problem(base, size, maps) is not None or not _fresh(maps, base, size):
        return []
    head = proc.mem.read_available(base, NOT_MARKED_PROBE)
    if head.startswith(records.MAGIC) or any(head):
        return []   # marked: free_pending() frees it; or used since: not ours to take
    proc.syscall("munmap", base, size)
    return [f"an unmarked image of {size} bytes at {base:#x} is unmapped"]


def _fresh(maps: list[Mapping], base: int, size: int) -> bool:
    """As hotpatch's mmap made it: private, readable and executable, not yet tightened."""
    return all(m.perms == "r-xp" for m in maps if base <= m.start < base + size)


def free_pending(proc: Process, maps: list[Mapping] | None = None) -> list[str]:
    """Unmap every image marked pending (mapped, never filled). What was done. `maps`: read just before."""
    done = []
    for base, size in records.find_pending(maps if maps is not None else proc.maps(), proc.mem):
        try:
            proc.syscall("munmap", base, size)
        except HotpatchError as e:
            done.append(f"the unfilled image at {base:#x} could not be unmapped ({e.message})")
            continue
        done.append(f"the unfilled image of an interrupted apply at {base:#x} ({size} bytes) is unmapped")
    return done
