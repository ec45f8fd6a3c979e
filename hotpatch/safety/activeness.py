"""Is any thread executing, or about to return into, code being replaced?

A thread is busy if its pc (or a register holding a return address, such as
aarch64 LR) is inside a guarded range, or if any word between its sp and the
top of its stack mapping is. Scanning every stack word is conservative: it
sees return addresses and pcs saved in signal frames without trusting an
unwinder, at the price of an occasional false "busy" (a stale code pointer in
a live frame), which only means waiting.
"""

import array
import bisect
import itertools
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

# Return addresses saved by PAC-signed code (aarch64 -mbranch-protection) carry
# the signature in their top bits: compare the low 48 bits only. Conservative
# everywhere: a stray word matching in its low 48 bits only means waiting.
ADDRESS_BITS = (1 << 48) - 1
_WORD = struct.Struct("<Q")


@dataclass(frozen=True)
class GuardedRange:
    start: int
    end: int
    label: str   # the function, for the message


@dataclass(frozen=True)
class Snapshot:
    """Every stopped thread's code pointers and live stack, laid out for one scan each.

    With a thousand threads, per-thread Python work dominates the commit stop:
    the stacks arrive in one buffer (one process_vm_readv), each part a whole
    number of words so that an aligned word never straddles two threads.
    """
    tids: list[int]
    pointers: list[tuple[int, ...]]   # per thread: (pc, other code pointers), the same count for all
    stacks: bytes | bytearray         # every thread's stack from its sp, one after another
    starts: list[int]                 # where each thread's part begins in `stacks`
    size: int                         # bytes of `stacks` in use (a reused buffer may be longer)
    bases: list[int] = field(default_factory=list)   # the address (sp) each thread's part was read from

    @classmethod
    def join(cls, threads: "list[tuple[int, tuple[int, ...], bytes]]",
             bases: list[int] | None = None) -> "Snapshot":
        """From (tid, pointers, stack) triples: for tests and small callers."""
        parts, starts, pos = [], [], 0
        for _, _, stack in threads:
            starts.append(pos)
            stack = stack[:len(stack) // 8 * 8]
            parts.append(stack)
            pos += len(stack)
        return cls([t[0] for t in threads], [t[1] for t in threads], b"".join(parts), starts, pos,
                   bases if bases is not None else [0] * len(threads))

    def part(self, index: int) -> bytes | bytearray:
        """Thread `index`'s captured stack bytes (a copy: slicing and comparing run at C speed)."""
        end = self.starts[index + 1] if index + 1 < len(self.starts) else self.size
        return self.stacks[self.starts[index]:end]

    def reader(self, index: int):
        """read_word(address) -> int | None over thread `index`'s captured stack."""
        base, start = self.bases[index], self.starts[index]
        end = self.starts[index + 1] if index + 1 < len(self.starts) else self.size
        data, unpack_from, limit = self.stacks, _WORD.unpack_from, end - start - 8

        def read_word(address: int) -> int | None:
            at = address - base
            if at < 0 or at > limit:
                return None
            return unpack_from(data, start + at)[0]
        return read_word


@dataclass(frozen=True)
class BusyThread:
    tid: int
    label: str
    how: str   # "is executing", "will return into", or why its stack is unreliable
    address: int
    frames: tuple[int, ...] = ()   # its real call chain, innermost first, when it was unwound
    catch_at: int | None = None    # where it is outside every guarded frame again: a return address

    def describe(self, thread_name: str) -> str:
        return f"thread {self.tid} ({thread_name}) {self.how} {self.label} (at {self.address:#x})"


class RangeSet:
    def __init__(self, ranges: list[GuardedRange]):
        merged: list[GuardedRange] = []
        for r in sorted((r for r in ranges if r.end > r.start), key=lambda r: r.start):
            if merged and r.start < merged[-1].end:   # overlapping: one range, both names
                last = merged.pop()
                label = last.label if r.label in last.label.split("/") else f"{last.label}/{r.label}"
                r = GuardedRange(last.start, max(last.end, r.end), label)
            merged.append(r)
        self.ranges = merged
        self.starts = [r.start for r in self.ranges]
        self.needles = _needles(self.ranges)

    def find(self, address: int) -> GuardedRange | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.ranges[i].end:
            return self.ranges[i]
        return None

    def all_words(self, data: bytes | bytearray, end: int | None = None) -> list[tuple[int, GuardedRange]]:
        """Every 8-byte-aligned little-endian word of data[:end] inside a range: (offset, range), by offset."""
        hits = []
        end = len(data) if end is None else end
        find, unpack_from = data.find, _WORD.unpack_from
        for k, needle in self.needles:
            judged: dict[int, GuardedRange | None] = {}   # a thousand idle threads hold the same word
            pos = find(needle, k, end)
            while pos >= 0:
                word_at = pos - k
                if word_at & 7 == 0 and word_at + 8 <= end:
                    value = unpack_from(data, word_at)[0] & ADDRESS_BITS
                    r = judged[value] if value in judged else judged.setdefault(value, self.find(value))
                    if r is not None:
                        hits.append((word_at, r))
                pos = find(needle, pos + 1, end)
        hits.sort(key=lambda h: h[0])
        return hits

    def scan_words(self, data: bytes | bytearray, end: int | None = None) -> tuple[int, GuardedRange] | None:
        """First 8-byte-aligned little-endian word of data[:end] inside a range: (offset, range)."""
        hits = []
        end = len(data) if end is None else end
        find, unpack_from = data.find, _WORD.unpack_from
        for k, needle in self.needles:
            # Code near a guarded range shares its needle: a thousand idle
            # threads hold the same return address. Each value is judged once.
            outside: set[int] = set()
            pos = find(needle, k, end)
            while pos >= 0:
                word_at = pos - k
                if word_at & 7 == 0 and word_at + 8 <= end:
                    value = unpack_from(data, word_at)[0] & ADDRESS_BITS
                    if value not in outside:
                        r = self.find(value)
                        if r is not None:
                            hits.append((word_at, r))
                            break
                        outside.add(value)
                pos = find(needle, pos + 1, end)
        return min(hits, key=lambda h: h[0]) if hits else None


MAX_NEEDLES = 16


def _needles(ranges: list[GuardedRange]) -> list[tuple[int, bytes]]:
    """What to search for: (k, the bytes above the k lowest) of every address in the ranges.

    Pointers into a range share their high bytes: bytes.find finds those at
    C speed, and only its hits are decoded. Leading zero bytes (the top of
    every user address) are left out: stacks are mostly zeros. Each needle
    costs one pass over all stacks, so a patch of many functions gets
    coarser needles (more low bytes left out, more hits to decode), at most
    MAX_NEEDLES of them.
    """
    best: list[tuple[int, bytes]] = []
    pieces = [p for r in ranges for p in _with_nonzero_tops(r.start, r.end)]
    for min_k in range(8):
        needles: dict[tuple[int, bytes], None] = {}
        for start, end in pieces:
            r = GuardedRange(start, end, "")
            own_k = _low_bytes_varying(r.start, r.end - 1)
            k = max(min_k, own_k)
            top = (r.start >> (8 * k)).to_bytes(8 - k, "little")
            trimmed = top.rstrip(b"\0")
            if not trimmed and k > own_k:
                return best   # coarser would mean searching for zeros
            needles[(k, trimmed or top)] = None
        best = list(needles)
        if len(best) <= MAX_NEEDLES:
            break
    return best


def _with_nonzero_tops(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) cut where needed so that every piece's needle has a nonzero byte.

    A needle is the bytes above those that vary within a piece, up to the
    highest nonzero one. A low range whose varying bytes reach its highest
    nonzero byte (0x40fff0..0x410010: bytes 0-2 vary, byte 3 up are zero)
    would need a needle of zeros that also spans bytes 6-7, where a PAC sits:
    a signed return address would never match. Cut at the boundaries of the
    highest varying byte instead (0x40fff0..0x410000 and 0x410000..0x410010).
    """
    out, todo = [], [(start, end)]
    while todo:
        lo, hi = todo.pop()
        k = _low_bytes_varying(lo, hi - 1)
        if k == 0 or lo >> (8 * k):
            out.append((lo, hi))
            continue
        step = 1 << (8 * (k - 1))
        cut = (lo // step + 1) * step
        todo += [(lo, min(cut, hi))] + ([(cut, hi)] if cut < hi else [])
    return sorted(out)


def _low_bytes_varying(lo: int, hi: int) -> int:
    k = 0
    while k < 8 and (lo >> (8 * k)) != (hi >> (8 * k)):
        k += 1
    return k


def find_busy(snapshot: Snapshot, ranges: RangeSet) -> BusyThread | None:
    """The first thread executing in `ranges` (pc or a code register), else the first returning into them."""
    per_thread = len(snapshot.pointers[0]) if snapshot.pointers else 0
    # The pointers as one array of words: the same C-speed scan as the stacks.
    words = array.array("Q", itertools.chain.from_iterable(snapshot.pointers)).tobytes()
    if len(words) != 8 * per_thread * len(snapshot.tids):
        raise ValueError("every thread needs the same number of code pointers")
    hit = ranges.scan_words(words)
    if hit is not None:
        offset, r = hit
        index = offset // 8
        how = "is executing" if index % per_thread == 0 else "will return into"
        value = int.from_bytes(words[offset:offset + 8], "little") & ADDRESS_BITS
        return BusyThread(snapshot.tids[index // per_thread], r.label, how, value)
    hit = ranges.scan_words(snapshot.stacks, snapshot.size)
    if hit is None:
        return None
    offset, r = hit
    tid = snapshot.tids[bisect.bisect_right(snapshot.starts, offset) - 1]
    value = int.from_bytes(snapshot.stacks[offset:offset + 8], "little") & ADDRESS_BITS
    return BusyThread(tid, r.label, "will return into", value)


class Suspect(NamedTuple):
    """A thread holding code pointers into the guarded ranges: busy unless its real frames say otherwise.

    executing: its pc is inside a range (always busy); lr_hit: a register that
    may hold a live return address (aarch64 LR) is; words: (address in its
    stack, range) of every stack word inside a range, lowest first. A tuple:
    a thousand of them may be made inside one stop.
    """
    position: int   # the thread's place in the snapshot
    tid: int
    executing: BusyThread | None
    lr_hit: BusyThread | None
    words: tuple[tuple[int, GuardedRange], ...]

    @property
    def highest(self) -> int:
        """The highest stack address a walk must pass to account for every word (0 when none)."""
        return self.words[-1][0] if self.words else 0


def find_suspects(snapshot: Snapshot, ranges: RangeSet) -> list[Suspect]:
    """Every thread with a candidate pointer.

    The C-speed scan of find_busy, keeping every hit: a thread with none is
    safe without unwinding. No per-thread Python work when nothing is found.
    """
    executing: dict[int, BusyThread] = {}
    lr: dict[int, BusyThread] = {}
    words: dict[int, list[tuple[int, GuardedRange]]] = {}
    per_thread = len(snapshot.pointers[0]) if snapshot.pointers else 0
    packed = array.array("Q", itertools.chain.from_iterable(snapshot.pointers)).tobytes()
    tids = snapshot.tids
    for offset, r in ranges.all_words(packed):
        i, j = divmod(offset // 8, per_thread)
        value = int.from_bytes(packed[offset:offset + 8], "little") & ADDRESS_BITS
        (executing if j == 0 else lr)[i] = BusyThread(tids[i], r.label, "is executing" if j == 0
                                                     else "will return into", value)
    starts, bases, bisect_right = snapshot.starts, snapshot.bases, bisect.bisect_right
    for offset, r in ranges.all_words(snapshot.stacks, snapshot.size):
        i = bisect_right(starts, offset) - 1
        found = words.get(i)
        if found is None:
            found = words[i] = []
        found.append((bases[i] + offset - starts[i], r))
    return [Suspect(i, tids[i], executing.get(i), lr.get(i), tuple(words.get(i, ())))
            for i in sorted(executing.keys() | lr.keys() | words.keys())]
