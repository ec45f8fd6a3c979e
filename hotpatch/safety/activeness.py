"""Is any thread executing, or about to return into, code being replaced?

A thread is busy if its pc (or a register holding a return address, such as
aarch64 LR) is inside a guarded range, or if any word between its sp and the
top of its stack mapping is. Scanning every stack word is conservative: it
sees return addresses and pcs saved in signal frames without trusting an
unwinder, at the price of an occasional false "busy" (a stale code pointer in
a live frame), which only means waiting.
"""

import bisect
from dataclasses import dataclass


# Return addresses saved by PAC-signed code (aarch64 -mbranch-protection) carry
# the signature in their top bits: compare the low 48 bits only. Conservative
# everywhere: a stray word matching in its low 48 bits only means waiting.
ADDRESS_BITS = (1 << 48) - 1


@dataclass(frozen=True)
class GuardedRange:
    start: int
    end: int
    label: str   # the function, for the message


@dataclass(frozen=True)
class ThreadSnapshot:
    tid: int
    pc: int
    code_pointers: tuple[int, ...]
    sp: int
    stack: bytes   # memory from sp up to the end of its mapping


@dataclass(frozen=True)
class BusyThread:
    tid: int
    label: str
    how: str   # "executing" or "will return into"
    address: int

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
        # Pointers into a range share their high bytes: search for those bytes
        # (C-speed bytes.find) instead of decoding every stack word in Python.
        # Leading zero bytes (the top of every user address) are left out of
        # the needle: stacks are mostly zeros, which would defeat the search.
        self.needles: dict[tuple[int, bytes], None] = {}
        for r in self.ranges:
            k = _low_bytes_varying(r.start, r.end - 1)
            top = (r.start >> (8 * k)).to_bytes(8 - k, "little")
            trimmed = top.rstrip(b"\0")
            self.needles[(k, trimmed or top)] = None

    def find(self, address: int) -> GuardedRange | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.ranges[i].end:
            return self.ranges[i]
        return None

    def scan_words(self, data: bytes) -> tuple[int, GuardedRange] | None:
        """First 8-byte-aligned little-endian word of `data` inside a range: (offset, range)."""
        hits = []
        for k, needle in self.needles:
            pos = data.find(needle, k)
            while pos >= 0:
                word_at = pos - k
                if word_at % 8 == 0 and word_at + 8 <= len(data):
                    value = int.from_bytes(data[word_at:word_at + 8], "little") & ADDRESS_BITS
                    r = self.find(value)
                    if r is not None:
                        hits.append((word_at, r))
                        break
                pos = data.find(needle, pos + 1)
        return min(hits, key=lambda h: h[0]) if hits else None


def _low_bytes_varying(lo: int, hi: int) -> int:
    k = 0
    while k < 8 and (lo >> (8 * k)) != (hi >> (8 * k)):
        k += 1
    return k


def find_busy(threads: list[ThreadSnapshot], ranges: RangeSet) -> BusyThread | None:
    for t in threads:
        for address in (t.pc, *t.code_pointers):
            r = ranges.find(address)
            if r is not None:
                how = "is executing" if address == t.pc else "will return into"
                return BusyThread(t.tid, r.label, how, address)
    # One scan over all stacks joined, each padded to whole words so that an
    # aligned word never straddles two threads: per-thread Python overhead
    # dominates with a thousand threads.
    parts, starts, pos = [], [], 0
    for t in threads:
        starts.append(pos)
        stack = t.stack[:len(t.stack) // 8 * 8]
        parts.append(stack)
        pos += len(stack)
    joined = b"".join(parts)
    hit = ranges.scan_words(joined)
    if hit is None:
        return None
    offset, r = hit
    t = threads[bisect.bisect_right(starts, offset) - 1]
    value = int.from_bytes(joined[offset:offset + 8], "little") & ADDRESS_BITS
    return BusyThread(t.tid, r.label, "will return into", value)
