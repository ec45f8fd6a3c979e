"""The journal a thread borrowed for a system call carries, so that it can be abandoned safely.

A remote system call runs on a system call followed by a return (`syscall;
ret`, `svc #0; ret`) already in the process's code, and that return goes to
an instruction looping on itself. While hotpatch holds the thread it never
gets there: its own registers are put back first. If hotpatch dies at any
instant (SIGKILL, the OOM killer), the kernel lets the thread go: it makes
the system call, returns into the loop and spins there, instead of running
on with borrowed registers into code that would crash the process.

Its own registers wait next to its stack pointer, below the area the
interrupted code may use, in the journal written here: with the system call
it makes, its thread id, and a checksum. The next hotpatch run finds the
thread by that journal (its pc on the loop the journal names), puts its
registers back and undoes what the call did (see live/repair.py).
"""

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"HPPARK\x00\x01"
CALL = 1 << 63   # in `nr`: a function call (the low bits: the caller's tag), not a system call
_HEAD = struct.Struct("<8sIIQ6QQQ")   # magic, tid, length of the registers, nr, arguments, gadget, park
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Journal:
    tid: int
    nr: int
    args: tuple[int, ...]
    gadget: int
    park: int
    registers: bytes


def size(registers_size: int) -> int:
    """Bytes of a journal holding `registers_size` bytes of registers, rounded to 16."""
    return (_HEAD.size + registers_size + _CRC.size + 15) & ~15


def encode(journal: Journal) -> bytes:
    body = _HEAD.pack(MAGIC, journal.tid, len(journal.registers), journal.nr, *journal.args,
                      journal.gadget, journal.park) + journal.registers
    out = body + _CRC.pack(zlib.crc32(body))
    return out + bytes(size(len(journal.registers)) - len(out))


def decode(data: bytes, registers_size: int) -> Journal | None:
    """The journal at the start of `data`, or None: wrong magic, length or checksum."""
    end = _HEAD.size + registers_size
    if len(data) < end + _CRC.size or not data.startswith(MAGIC):
        return None
    magic, tid, length, nr, *rest = _HEAD.unpack_from(data)
    if length != registers_size or _CRC.unpack_from(data, end)[0] != zlib.crc32(data[:end]):
        return None
    args, gadget, park = tuple(rest[:6]), rest[6], rest[7]
    return Journal(tid, nr, args, gadget, park, bytes(data[_HEAD.size:end]))
