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


@dataclass(frozen=True)
class GuardedRange:
    start: int
    end: int
    label: str   # the function, for the message


@dataclass(frozen=True)
class ThreadSnapshot:
    tid: int
    name: str
    pc: int
    code_pointers: tuple[int, ...]
    sp: int
    stack: bytes   # memory from sp up to the end of its mapping


@dataclass(frozen=True)
class BusyThread:
    tid: int
    name: str
    label: str
    how: str   # "executing" or "will return into"
    address: int

    def describe(self) -> str:
        return f"thread {self.tid} ({self.name}) {self.how} {self.label} (at {self.address:#x})"


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
        self.needles: dict[tuple[int, bytes], None] = {}
        for r in self.ranges:
            k = _low_bytes_varying(r.start, r.end - 1)
            self.needles[(k, (r.start >> (8 * k)).to_bytes(8 - k, "little"))] = None

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
                    r = self.find(int.from_bytes(data[word_at:word_at + 8], "little"))
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
                return BusyThread(t.tid, t.name, r.label, how, address)
    for t in threads:
        hit = ranges.scan_words(t.stack)
        if hit is not None:
            offset, r = hit
            value = int.from_bytes(t.stack[offset:offset + 8], "little")
            return BusyThread(t.tid, t.name, r.label, "will return into", value)
    return None
