"""The patch image in the process: where it goes, mapping it, filling it, and when it may be freed.

Mapped r-x first, then parts tightened to r-- and rw-: never writable and
executable at once. Filled through /proc/PID/mem while the process runs;
nothing reaches it until the trampolines are written.
"""

import os
from dataclasses import dataclass

from hotpatch.errors import RemoteSyscallError
from hotpatch.link.linker import LOW_LIMIT, LayoutPlan, LinkedImage
from hotpatch.linux import (
    EEXIST,
    MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    NO_FD,
    PR_SET_VMA,
    PR_SET_VMA_ANON_NAME,
    PROT_EXEC,
    PROT_READ,
)
from hotpatch.live import records
from hotpatch.live.placement import candidate_addresses
from hotpatch.process.anon_names import kernel_names_anonymous_mappings
from hotpatch.process.attach import Process
from hotpatch.process.maps import Mapping
from hotpatch.process.modules import Module
from hotpatch.safety.activeness import GuardedRange, RangeSet

MAX_PLACEMENT_TRIES = 16
ANYWHERE = 0x7F00_0000_0000   # a link address for checks when no hole is near: far forms are used


def candidates(proc: Process, maps: list[Mapping], module: Module, size: int, low: bool = False) -> list[int]:
    """Free addresses from which the image reaches the module with the short jump forms, nearest first;
    with `low` (absolute 32-bit relocations, a non-PIE program's code) only those below LOW_LIMIT."""
    if os.environ.get("HOTPATCH_FAR_IMAGE"):   # test hook: exercise the far jump forms
        return []
    arch, out = proc.arch, []
    for reach in (arch.branch_reach, arch.fallback_reach):
        if reach:
            out += [a for a in candidate_addresses(maps, module.start, module.end, size, proc.page_size, reach)
                    if a not in out and (not low or a + size <= LOW_LIMIT)]
    return out


def map_image(proc: Process, plan: LayoutPlan, addresses: list[int], record_id: int, name_vmas: bool) -> int:
    """mmap the image r-x at the first free candidate (else anywhere), then tighten its parts.

    MAP_FIXED_NOREPLACE never clobbers a mapping the running process created
    meanwhile; on EEXIST the next hole is tried. Each mapping is marked with a
    pending header while the thread that made it is still parked (see
    process/parking.py): a run killed at any instant leaves no image the next
    run cannot find.
    """
    with proc.syscall_thread_held():
        return _map_image(proc, plan, addresses, record_id, name_vmas)


def _map_image(proc: Process, plan: LayoutPlan, addresses: list[int], record_id: int, name_vmas: bool) -> int:
    flags = MAP_PRIVATE | MAP_ANONYMOUS
    header = records.pending_header(record_id, plan.size)

    def mark(result: int) -> None:
        if 0 <= result < 1 << 63:
            proc.mem.write(result, header)

    base = None
    for addr in addresses[:MAX_PLACEMENT_TRIES]:
        try:
            got = proc.syscall("mmap", addr, plan.size, PROT_READ | PROT_EXEC, flags | MAP_FIXED_NOREPLACE, NO_FD, 0,
                               mark=mark)
        except RemoteSyscallError as e:
            if e.errno == EEXIST:
                continue
            raise
        if got == addr:
            base = got
            break
        proc.syscall("munmap", got, plan.size)   # pre-4.17 kernels treat the flag as a hint
    if base is None:
        base = proc.syscall("mmap", 0, plan.size, PROT_READ | PROT_EXEC, flags, NO_FD, 0, mark=mark)
    try:
        for seg in plan.segments:
            if seg.prot != PROT_READ | PROT_EXEC:
                proc.syscall("mprotect", base + seg.offset, seg.size, seg.prot)
        if name_vmas and kernel_names_anonymous_mappings():
            try:
                proc.syscall("prctl", PR_SET_VMA, PR_SET_VMA_ANON_NAME, base, plan.size,
                             base + records.NAME_OFFSET)
            except RemoteSyscallError:
                pass   # refused for this process alone: list finds the image by its magic
    except BaseException:
        proc.syscall("munmap", base, plan.size)
        raise
    return base


def fill(proc: Process, image: LinkedImage, record: records.PatchRecord, header_size: int, key: bytes) -> None:
    """Write the linked image, its record in the header (authenticated with `key`), into the mapping."""
    image.data[:header_size] = record.header_bytes(header_size, key, proc.pid)
    proc.mem.write(image.base, bytes(image.data))


# -- freeing ------------------------------------------------------------------

SCAN_CHUNK = 16 << 20
MAX_SCAN = 4 << 30   # beyond this much writable memory, a pointer cannot be ruled out: keep the image


@dataclass(frozen=True)
class Reference:
    """Why an image cannot be freed yet: a word of the process's memory points into its code."""
    address: int       # where the word is (0 when the scan was cut short)
    value: int
    range: GuardedRange
    mapping: str

    def describe(self) -> str:
        if not self.address:
            return f"the process has more than {MAX_SCAN >> 30} GiB of writable memory to search"
        return f"a pointer into {self.range.label} at {self.address:#x} ({self.mapping or 'anonymous memory'})"


def find_reference(proc: Process, ranges: RangeSet, skip: set[int], own: tuple[int, int]) -> Reference | None:
    """The first word of writable memory (outside mappings starting at `skip` and the image's own
    [start, end)) pointing into `ranges`.

    Run while the process runs, after the code was restored: what is found is a
    function pointer into the image, or a saved context (a parked coroutine)
    that will return into it. Thread stacks are given in `skip`: their frames
    were checked precisely while every thread was stopped, and their dead parts
    hold stale words that mean nothing.
    """
    scanned = 0
    for m in proc.maps():
        if not (m.readable and m.perms[1] == "w") or m.start in skip or m.path in ("[vvar]", "[vsyscall]"):
            continue
        if own[0] <= m.start < own[1]:
            continue   # the image's own data (its GOT, libgcc's registration object) points into it
        for pos in range(m.start, m.end, SCAN_CHUNK):
            if scanned >= MAX_SCAN:
                return Reference(0, 0, ranges.ranges[0], "")
            data = proc.mem.read_available(pos, min(SCAN_CHUNK, m.end - pos))
            scanned += len(data)
            hits = ranges.all_words(data)
            if hits:
                offset, r = hits[0]
                value = int.from_bytes(data[offset:offset + 8], "little")
                return Reference(pos + offset, value, r, m.path)
    return None
