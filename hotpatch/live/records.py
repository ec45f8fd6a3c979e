"""The record of an applied patch, kept in the process itself: written, found and parsed here.

Each patch image starts with a read-only header page holding a magic, the
name given to the mapping, and a JSON record: which functions were switched,
the bytes that were there before, the bytes written. `list` and `revert` read
it back from any later hotpatch process, so nothing lives on the patcher's side.

Header layout: MAGIC (16) | mapping name, NUL-padded (32) | u32 JSON length | u32 flags | u64 | JSON at 64 |
its authentication code (32: HMAC-SHA256 with the host key, see hostkey.py).
The flags change after apply (a retired image, a transaction under way); the JSON never does. An image
is marked as soon as it exists, before it is filled: a pending header (no
JSON; the u64 is the image's size), so that no image is ever lost.
"""

import json
import struct
from dataclasses import dataclass, fields

from hotpatch.errors import HotpatchError
from hotpatch.live import hostkey
from hotpatch.process.maps import Mapping
from hotpatch.process.memory import Memory

MAGIC = b"\x7fHOTPATCH-RECORD"
NAME_OFFSET, NAME_SIZE = 16, 32
LENGTH_OFFSET = 48
FLAGS_OFFSET = 52
FLAG_RETIRED = 1   # reverted, but kept mapped: something may still return into or call its code
FLAG_FRAMES_REGISTERED = 2   # the process's unwinder knows the image's .eh_frame (see live/ehframe.py)
FLAG_PENDING = 4   # mapped, not yet filled: no record yet (an apply killed here leaves it to the next run)
# The journal of a transaction on the record: set before its first site is written, cleared once the
# run is past its commit point. Sites found half written under one of these were cut short by a
# killed run (the next run completes the rollback); without, someone else changed them.
FLAG_COMMITTING = 8
FLAG_REVERTING = 16
PENDING_SIZE_OFFSET = 56   # u64: the size of a pending image
JSON_OFFSET = 64
MAX_RECORD = 1 << 20   # bytes of JSON a record may have: no read of more, whatever its header says
_LEN = struct.Struct("<I")
VMA_NAME_PREFIX = "[anon:hotpatch:"
MAX_BYTES_HEX = 2 * 32


@dataclass
class SwitchedFunction:
    name: str
    entry: int       # original function entry
    site: int        # where the jump was written (after a landing pad)
    new: int         # replacing function
    saved: str       # hex: bytes at site before (original, or an earlier patch's jump)
    written: str     # hex: the jump
    size: int = 0    # bytes of the replacing function (0 in records of hotpatch 0.1.0)


@dataclass
class PatchRecord:
    id: int
    patch: str
    patch_sha256: str
    applied_at: str
    hotpatch_version: str
    build_id: str
    module: str
    bias: int
    base: int
    size: int
    code: list[int]                  # [start, end) of the image's executable part
    functions: list[SwitchedFunction]
    eh_frame: list[int] | None = None   # [start, end) of the image's .eh_frame, if the patch has one
    trap: int = 0                       # a breakpoint instruction in the image (return of a call made in it)
    frame_object: int | None = None     # libgcc's registration object in the image
    retired: bool = False               # from the header's flags, not the JSON
    frames_registered: bool = False     # likewise
    committing: bool = False            # likewise
    reverting: bool = False             # likewise
    authentic: bool = False             # its code matched the host key when it was read

    def flags(self) -> int:
        return ((FLAG_RETIRED if self.retired else 0) | (FLAG_FRAMES_REGISTERED if self.frames_registered else 0)
                | (FLAG_COMMITTING if self.committing else 0) | (FLAG_REVERTING if self.reverting else 0))

    def header_bytes(self, size: int, key: bytes, pid: int) -> bytes:
        body = json.dumps(_json_fields(self), sort_keys=True).encode()
        out = bytearray(size)
        out[:JSON_OFFSET] = record_header_prefix(self.id)
        _LEN.pack_into(out, LENGTH_OFFSET, len(body))
        _LEN.pack_into(out, FLAGS_OFFSET, self.flags())
        if JSON_OFFSET + len(body) + hostkey.TAG_SIZE > size:
            raise HotpatchError(f"internal: a record of {len(body)} bytes does not fit its {size}-byte header")
        out[JSON_OFFSET:JSON_OFFSET + len(body)] = body
        out[JSON_OFFSET + len(body):JSON_OFFSET + len(body) + hostkey.TAG_SIZE] = hostkey.tag(key, pid, self.base, body)
        return bytes(out)

    @classmethod
    def from_header(cls, data: bytes) -> "PatchRecord | None":
        if len(data) < JSON_OFFSET or data[:16] != MAGIC:
            return None
        (length,) = _LEN.unpack_from(data, LENGTH_OFFSET)
        (flags,) = _LEN.unpack_from(data, FLAGS_OFFSET)
        if length > MAX_RECORD:
            return None
        body = data[JSON_OFFSET:JSON_OFFSET + length]
        try:
            raw = json.loads(body)
            for flag in ("retired", "frames_registered", "committing", "reverting", "authentic"):
                raw.pop(flag, None)
            raw["functions"] = [SwitchedFunction(**f) for f in raw["functions"]]
            record = cls(**raw, retired=bool(flags & FLAG_RETIRED),
                         frames_registered=bool(flags & FLAG_FRAMES_REGISTERED),
                         committing=bool(flags & FLAG_COMMITTING), reverting=bool(flags & FLAG_REVERTING))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
            return None   # the process's memory is not trusted: a malformed record is no record
        return record if _well_formed(record) else None


def record_header_prefix(record_id: int) -> bytes:
    """The fixed part of a header (magic, name, zero length and flags) up to the JSON."""
    out = bytearray(JSON_OFFSET)
    out[:len(MAGIC)] = MAGIC
    name = f"hotpatch:{record_id}".encode()[:NAME_SIZE - 1]
    out[NAME_OFFSET:NAME_OFFSET + len(name)] = name
    return bytes(out)


def pending_header(record_id: int, size: int) -> bytes:
    """The header of an image mapped and not yet filled."""
    out = bytearray(record_header_prefix(record_id))
    _LEN.pack_into(out, FLAGS_OFFSET, FLAG_PENDING)
    struct.pack_into("<Q", out, PENDING_SIZE_OFFSET, size)
    return bytes(out)


def find_pending(maps: list[Mapping], mem: Memory) -> list[tuple[int, int]]:
    """(base, size) of every image whose apply ended before it was filled, its span checked."""
    out = []
    for m in maps:
        if not (m.anonymous and m.perms.startswith("r") and m.offset == 0):
            continue
        head = mem.read_available(m.start, JSON_OFFSET)
        if len(head) < JSON_OFFSET or head[:len(MAGIC)] != MAGIC:
            continue
        (length,) = _LEN.unpack_from(head, LENGTH_OFFSET)
        (flags,) = _LEN.unpack_from(head, FLAGS_OFFSET)
        (size,) = struct.unpack_from("<Q", head, PENDING_SIZE_OFFSET)
        if length == 0 and flags == FLAG_PENDING and image_span_problem(m.start, size, maps) is None:
            out.append((m.start, size))
    return out


def image_span_problem(base: int, size: int, maps: list[Mapping]) -> str | None:
    """Why [base, base + size) is not an image's span (whole, page-aligned anonymous mappings of its own)."""
    from hotpatch.link.linker import MAX_IMAGE_SIZE
    if not 0 < size <= MAX_IMAGE_SIZE or base % 4096 or size % 4096:
        return f"an image of {size} bytes at {base:#x}"
    end, covered = base + size, base
    for m in sorted((m for m in maps if m.start < end and m.end > base), key=lambda m: m.start):
        if m.start != covered or not m.anonymous:
            return f"its image [{base:#x}, {end:#x}) is not one anonymous mapping of its own"
        covered = m.end
    if covered < end:
        return f"its image [{base:#x}, {end:#x}) is not mapped whole"
    return None


def _well_formed(r: "PatchRecord") -> bool:
    """Every field of the type and range it must have (what it says is checked where it is used)."""
    def u64(*values) -> bool:
        return all(type(v) is int and 0 <= v < 1 << 64 for v in values)

    def text(*values) -> bool:
        return all(type(v) is str and len(v) < 4096 for v in values)

    def code_range(v) -> bool:
        return isinstance(v, list) and len(v) == 2 and u64(*v) and v[0] <= v[1]

    return (u64(r.id, r.bias, r.base, r.size, r.trap) and text(r.patch, r.patch_sha256, r.applied_at,
                                                               r.hotpatch_version, r.build_id, r.module)
            and code_range(r.code) and (r.eh_frame is None or code_range(r.eh_frame))
            and (r.frame_object is None or u64(r.frame_object))
            and isinstance(r.functions, list) and len(r.functions) < 100_000
            and all(text(f.name, f.saved, f.written) and u64(f.entry, f.site, f.new, f.size)
                    and len(f.saved) <= 2 * 64 and len(f.saved) == len(f.written) for f in r.functions))


_HEADER_FLAGS = ("retired", "frames_registered", "committing", "reverting", "authentic")


def _json_fields(record: "PatchRecord") -> dict:
    # What asdict() gives, without its deep copies (it runs several times per apply)
    raw = {f.name: getattr(record, f.name) for f in fields(record) if f.name not in _HEADER_FLAGS}
    raw["functions"] = [{f.name: getattr(fn, f.name) for f in fields(fn)} for fn in record.functions]
    return raw


def json_length(record: PatchRecord) -> int:
    """Bytes of JSON the record's header holds (as header_bytes() writes it)."""
    return len(json.dumps(_json_fields(record), sort_keys=True).encode())


def rewrite(record: PatchRecord, mem: Memory, key: bytes, pid: int, old_length: int) -> None:
    """Write the record again (its fields changed), authenticated anew; what a longer old JSON held is
    zeroed. It fits: headers are sized for the widest fields (header_size_for)."""
    size = JSON_OFFSET + max(json_length(record), old_length) + hostkey.TAG_SIZE
    mem.write(record.base, record.header_bytes(size, key, pid))


def write_flags(record: PatchRecord, mem: Memory) -> None:
    """The header's flags from the record's (the page is r--: /proc/PID/mem writes it)."""
    mem.write(record.base + FLAGS_OFFSET, _LEN.pack(record.flags()))


def mark_retired(record: PatchRecord, mem: Memory) -> None:
    """Flag a reverted record whose image must stay mapped."""
    record.retired, record.reverting = True, False
    write_flags(record, mem)


def header_size_for(functions: list[str], patch_name: str, module: str, page_size: int) -> int:
    """Room for the record, computed before any address is known (every number at its widest)."""
    big = (1 << 64) - 1
    worst = PatchRecord(big, patch_name, "f" * 64, "2026-01-01T00:00:00.000000+00:00", "x" * 16,
                        "f" * 64, module, big, big, big, [big, big],
                        [SwitchedFunction(name, big, big, big, "f" * MAX_BYTES_HEX, "f" * MAX_BYTES_HEX, big)
                         for name in functions], [big, big], big, big)
    body = len(json.dumps(_json_fields(worst), sort_keys=True).encode())
    return (JSON_OFFSET + body + hostkey.TAG_SIZE + page_size - 1) // page_size * page_size


def original_view(records: list[PatchRecord], address: int, current: bytes) -> bytes:
    """What `current` (memory at `address`) was before the given patches wrote their jumps."""
    view = bytearray(current)
    for record in sorted(records, key=lambda r: r.id, reverse=True):
        for f in record.functions:
            saved = bytes.fromhex(f.saved)
            lo, hi = max(f.site, address), min(f.site + len(saved), address + len(view))
            if lo < hi:
                view[lo - address:hi - address] = saved[lo - f.site:hi - f.site]
    return bytes(view)


def find_records(maps: list[Mapping], mem: Memory, pid: int = 0, key: bytes | None = None) -> list[PatchRecord]:
    """Every patch record in the process, oldest first: read-only anonymous mappings starting with MAGIC;
    each `authentic` if its code matches `key` for process `pid`."""
    records = []
    for m in maps:
        if not (m.anonymous and m.perms.startswith("r-") and m.offset == 0):
            continue
        if m.path and not m.path.startswith(VMA_NAME_PREFIX):
            continue
        head = mem.read_available(m.start, JSON_OFFSET)
        if len(head) < JSON_OFFSET or head[:len(MAGIC)] != MAGIC:
            continue
        (length,) = _LEN.unpack_from(head, LENGTH_OFFSET)
        if length > MAX_RECORD or JSON_OFFSET + length + hostkey.TAG_SIZE > m.end - m.start:
            continue   # a header claiming more than its mapping holds is no record of ours
        data = mem.read_available(m.start, JSON_OFFSET + length + hostkey.TAG_SIZE)
        record = PatchRecord.from_header(data[:JSON_OFFSET + length])
        if record is not None and record.base == m.start:
            record.authentic = hostkey.matches(key, pid, m.start, data[JSON_OFFSET:JSON_OFFSET + length],
                                               data[JSON_OFFSET + length:])
            records.append(record)
    return sorted(records, key=lambda r: r.id)


def state(record: PatchRecord, mem: Memory) -> str:
    """What its sites hold: "active" (every jump), "inactive" (every saved byte: never switched, or
    switched back), "partial" (some of each: a run cut between two sites) or "superseded" (another's)."""
    held = set()
    for f in record.functions:
        current = mem.read_available(f.site, len(f.written) // 2).hex()
        held.add("written" if current == f.written else "saved" if current == f.saved else "other")
    if held == {"written"}:
        return "active"
    if held <= {"saved"}:
        return "inactive"
    return "partial" if held == {"written", "saved"} else "superseded"


def interrupted(record: PatchRecord) -> bool:
    """A run was applying or reverting it when it ended (its journal flags)."""
    return record.committing or record.reverting


def unloaded(record: PatchRecord, maps: list[Mapping], modules) -> bool:
    """Its library is gone (dlclose; loaded again, it is a new module elsewhere): none of its sites lies in
    executable memory. Such a record's image can only be freed: there is no code left to restore."""
    return bool(record.functions) and \
        not any(m.executable and m.start <= f.site < m.end for f in record.functions for m in maps)


def verify_unloaded(record: PatchRecord, maps: list[Mapping]) -> str | None:
    """For a record whose library is gone, what can still be checked: its image, and that hotpatch wrote it."""
    problem = image_span_problem(record.base, record.size, maps)
    if problem is not None:
        return problem
    if not record.authentic:
        return ("its authentication code does not match this host's key: altered or forged in the process, "
                f"or written without the key ({hostkey.key_path()})")
    return None


def verify(record: PatchRecord, arch, maps: list[Mapping], modules) -> str | None:
    """Why a record read from the process cannot be acted on, or None.

    The process's memory is not trusted: a record is only what hotpatch itself
    would have written. Its image must be anonymous memory it spans exactly
    (at most the largest image hotpatch makes); each site must lie in the
    executable code of the module with the record's build-id, and the bytes
    written there must be a landing pad kept as it was plus exactly the jump
    hotpatch makes from that site to a function inside the record's own code.
    """
    problem = image_span_problem(record.base, record.size, maps)
    if problem is not None:
        return problem
    if not record.base <= record.code[0] <= record.code[1] <= record.base + record.size:
        return "its code lies outside its image"
    module = next((mod for mod in modules if mod.image.build_id == record.build_id), None)
    for f in record.functions:
        try:
            written = bytes.fromhex(f.written)
            bytes.fromhex(f.saved)
        except ValueError:
            return f"{f.name}: bytes that are not hex"
        hop = arch.is_hop(f.site, f.entry, written, f.new)   # a short function's: from the padding before
        pad = arch.landing_pad(written)   # kept (endbr64, bti c) or made bti c (paciasp), then the jump
        if not hop and (f.site != f.entry or pad >= len(written)):
            return f"{f.name}: a site {f.site:#x} that is not the function's entry {f.entry:#x}"
        if module is None or not any(m.start <= f.site and f.site + len(written) <= m.end and m.executable
                                     and m.path == module.path for m in maps):
            return f"{f.name}: a site {f.site:#x} outside the code of the module with build-id {record.build_id[:16]}"
        if not record.code[0] <= f.new < record.code[1]:
            return f"{f.name}: a replacement at {f.new:#x} outside the record's own code"
        if hop:
            continue   # is_hop compared every byte with the jumps hotpatch makes
        try:
            expected = arch.branch(f.site + pad, f.new, len(written) - pad).code
        except HotpatchError:
            return f"{f.name}: no jump of {len(written) - pad} bytes reaches {f.new:#x}"
        if written[pad:] != expected:
            return f"{f.name}: the bytes it says it wrote are not hotpatch's jump to {f.new:#x}"
    if not record.authentic:
        return ("its authentication code does not match this host's key: altered or forged in the process, "
                f"or written without the key ({hostkey.key_path()})")
    return None
