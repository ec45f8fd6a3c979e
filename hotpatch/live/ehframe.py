"""Making the patch's unwind information visible to the process's own unwinder (libgcc).

C++ exceptions thrown in or through replaced functions, pthread_cancel and
backtrace() all unwind with libgcc, which finds frame information in loaded
objects and in objects registered with __register_frame_info. The patch
image is no loaded object, so it is registered: the one function hotpatch
ever runs in a process (see README, "What runs in the process").

It runs only at a moment shown to be safe, on one borrowed thread while the
others keep running: that thread must not be inside the unwinder (which holds
its lock while searching) nor inside malloc (deregistering frees memory), as
far as the conservative scan of its pc and live stack can tell; otherwise
another thread is tried, then the same ones again until the deadline. A call
that faults or does not return is abandoned with the thread's registers
restored. An image whose deregistration could not be done is never freed: it
is retired instead, since libgcc would read freed memory.
"""

import os
import time
from dataclasses import dataclass
from typing import Callable

from hotpatch.elf import filecache
from hotpatch.elf.dynamic import DynamicSymbols
from hotpatch.elf.symbols import debug_dirs_from_env, find_debug_file, functions_named
from hotpatch.errors import ELFFormatError, HotpatchError, ProcessBusy, RemoteCallError
from hotpatch.live import records
from hotpatch.live.records import PatchRecord
from hotpatch.process.attach import Process
from hotpatch.process.maps import MapIndex
from hotpatch.process.modules import LoadedModules, module_file
from hotpatch.safety.activeness import GuardedRange, RangeSet, find_busy

REGISTER, DEREGISTER = "__register_frame_info", "__deregister_frame_info"
REGISTER_TAG, DEREGISTER_TAG = 1, 2   # what a journaled call was (process/parking.py; live/repair.py reads them)
CALL_TIMEOUT = 2.0
RETRY_DELAY = 0.01
MAX_CANDIDATES = 8   # threads tried per attempt
# Functions of the allocator a borrowed thread must not be inside (glibc's
# names, public and internal, and the usual interposers' public ones).
MALLOC_FUNCTIONS = frozenset({
    "malloc", "free", "calloc", "realloc", "reallocarray", "memalign", "aligned_alloc", "posix_memalign",
    "valloc", "pvalloc", "malloc_trim", "malloc_usable_size", "cfree",
    "__libc_malloc", "__libc_free", "__libc_calloc", "__libc_realloc", "__libc_memalign", "__libc_valloc",
    "__libc_pvalloc", "_int_malloc", "_int_free", "_int_realloc", "_int_memalign", "_mid_memalign",
    "malloc_consolidate", "sysmalloc", "systrim", "tcache_init", "arena_get2", "arena_get_retry",
    "__malloc_arena_thread_freeres", "_int_free_merge_chunk", "_int_free_create_chunk", "_int_free_maybe_consolidate",
})


@dataclass(frozen=True)
class Unwinder:
    """The process's libgcc entry points, and where a borrowed thread must not be."""
    register: int
    deregister: int
    unsafe: RangeSet


def find_unwinder(proc: Process, loaded: LoadedModules) -> Unwinder | None:
    """libgcc's registration functions as the process binds them; None when it has no unwinder loaded."""
    symbols = loaded.symbols(proc.pid, proc.mem, proc.arch.got_reloc_types)
    register, deregister = symbols.resolve(REGISTER), symbols.resolve(DEREGISTER)
    if register is None or deregister is None:
        return None
    ranges = []
    for m in loaded.modules:
        name = os.path.basename(m.path)
        if m.start <= register < m.end:
            if m.file_mapping is loaded.modules[0].file_mapping:
                ranges.append(GuardedRange(register, register + 1, "the unwinder"))   # a static libgcc
            else:
                ranges.append(GuardedRange(m.start, m.end, f"the unwinder ({name})"))
        if name.startswith("libc.so") or name.startswith(("libjemalloc", "libtcmalloc", "libmimalloc")):
            ranges += _malloc_ranges(proc, m)
    return Unwinder(register, deregister, RangeSet(ranges))


def _malloc_ranges(proc: Process, module) -> list[GuardedRange]:
    """The allocator's functions in `module`: exported ones by hash lookup; internal ones (_int_malloc)
    only have local symbols, in .symtab or a debug file, read when there is one."""
    path = module_file(proc.pid, module)
    try:
        exported = filecache.parsed(path, DynamicSymbols.from_path)
    except ELFFormatError:
        # Without its symbols the whole library counts: a thread in it is never borrowed.
        return [GuardedRange(module.start, module.end, os.path.basename(module.path))]
    out = []
    for name in MALLOC_FUNCTIONS:
        found = exported.extent(name)
        if found is not None:
            out.append(GuardedRange(module.bias + found[0], module.bias + found[0] + max(found[1], 1), name))
    local = _local_functions(path, module.image.build_id)
    if local is not None:
        out += [GuardedRange(module.bias + value, module.bias + value + max(size, 1), name)
                for name, value, size in local]
    elif out:
        # The internal functions are not named here: from the first exported one to the last covers them
        # in glibc's layout (malloc.c is one translation unit).
        out.append(GuardedRange(min(r.start for r in out), max(r.end for r in out), "malloc"))
    return out


def _local_functions(path: str, build_id: str | None) -> list[tuple[str, int, int]] | None:
    """The allocator's functions in the .symtab of the library or of its debug file, if either has one."""
    for candidate in (path, find_debug_file(build_id, debug_dirs_from_env())):
        if candidate is None:
            continue
        try:
            found = filecache.parsed(candidate, _allocator_functions)
        except ELFFormatError:
            continue
        if found is not None:
            return found
    return None


def _allocator_functions(path: str) -> list[tuple[str, int, int]] | None:
    return functions_named(path, MALLOC_FUNCTIONS)


def _safe_thread(proc: Process, unwinder: Unwinder) -> int | None:
    """A thread, stopped and left stopped, whose pc and live stack point nowhere into the unsafe code."""
    leader = proc.syscall_thread()
    candidates = [leader] + [t for t in proc.thread_ids() if t != leader]
    maps = MapIndex(proc.maps())
    for tid in candidates[:MAX_CANDIDATES]:
        if not proc.stop_thread(tid):
            continue
        if find_busy(proc.snapshot(maps), unwinder.unsafe) is None:
            return tid
        proc.resume_thread(tid)
    return None


def call_when_safe(proc: Process, unwinder: Unwinder, function: int, args: list[int], trap: int,
                   deadline: float, what: str, tag: int, mark: Callable[[int], None]) -> int:
    """Call `function` on a thread shown safe, retrying until `deadline`; ProcessBusy after it.
    `mark(result)` records what the call did while the thread cannot yet be lost (see Process.call)."""
    while True:
        tid = _safe_thread(proc, unwinder)
        if tid is not None:
            try:
                return proc.call(function, args, trap, CALL_TIMEOUT, tid=tid, tag=tag, mark=mark)
            finally:
                proc.resume_thread(tid)
        if time.monotonic() >= deadline:
            raise ProcessBusy(f"no thread of process {proc.pid} was outside the unwinder and malloc to {what}",
                              "retry when the process is less busy")
        time.sleep(RETRY_DELAY)


def register(proc: Process, unwinder: Unwinder, record: PatchRecord, deadline: float) -> None:
    """The record's frames registered, and its flag saying so written the moment they are."""
    def registered(_: int) -> None:
        record.frames_registered = True
        records.write_flags(record, proc.mem)
    assert record.eh_frame is not None and record.frame_object is not None
    call_when_safe(proc, unwinder, unwinder.register, [record.eh_frame[0], record.frame_object], record.trap,
                   deadline, "register the patch's unwind information", REGISTER_TAG, registered)


def deregister(proc: Process, unwinder: Unwinder, record: PatchRecord, deadline: float) -> None:
    """__deregister_frame_info(eh_frame) returns the object it removed: anything else is an error.
    (libgcc asserts that it knows the object: only a record flagged registered is ever deregistered.)"""
    def deregistered(got: int) -> None:
        if got != 0:
            record.frames_registered = False
            records.write_flags(record, proc.mem)
    assert record.eh_frame is not None
    eh_frame = record.eh_frame[0]
    got = call_when_safe(proc, unwinder, unwinder.deregister, [eh_frame], record.trap, deadline,
                         "deregister the patch's unwind information", DEREGISTER_TAG, deregistered)
    if got == 0:
        raise RemoteCallError(f"the unwinder of process {proc.pid} did not know the frames at {eh_frame:#x}")


def deregistered(proc: Process, loaded: LoadedModules, record: PatchRecord, timeout: float) -> str | None:
    """Deregister, or say why not (the image must then stay mapped)."""
    try:
        unwinder = find_unwinder(proc, loaded)
        if unwinder is None:
            return "its unwinder is no longer loaded"
        deregister(proc, unwinder, record, time.monotonic() + timeout)
        return None
    except HotpatchError as e:
        if not proc.alive():
            raise
        return e.message
