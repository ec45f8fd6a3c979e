"""A file a process maps may claim sections of any size (a sparse 16 GiB "library" once took root's apply
to 8.4 GB): no section larger than elf/sections.py's bound is read, stored or inflated."""

import os
import resource
import struct

import pytest

from hotpatch.elf.dynamic import DynamicSymbols
from hotpatch.elf.sections import MAX_SECTION_SIZE
from hotpatch.elf.symbols import functions_named
from hotpatch.errors import ELFFormatError

CLAIMED = (16 << 30) // 24 * 24   # whole symbols of 24 bytes


def hostile_elf(path: str, name: bytes, sh_type: int) -> None:
    """A sparse file: an ELF header, a section named `name` claiming 16 GiB from offset 4096, its names."""
    names = b"\0" + name + b"\0.shstrtab\0"
    shoff = 0x200
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 3, 62, 1, 0, 0, shoff, 0, 64, 56,
                       0, 64, 3, 2)
    null = bytes(64)
    section = struct.pack("<IIQQQQIIQQ", 1, sh_type, 2, 0, 4096, CLAIMED, 2, 0, 8, 24)
    strtab = struct.pack("<IIQQQQIIQQ", 1 + len(name) + 1, 3, 0, 0, 0x100, len(names), 0, 0, 1, 0)
    with open(path, "wb") as f:
        f.write(ehdr)
        f.seek(0x100)
        f.write(names)
        f.seek(shoff)
        f.write(null + section + strtab)
        f.truncate(4096 + CLAIMED)   # sparse: nothing is stored


@pytest.mark.parametrize("read", ["dynsym", "symtab"])
def test_a_16_gib_section_is_refused_not_read(tmp_path, read):
    path = str(tmp_path / "libhostile.so")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ELFFormatError, match="more than hotpatch reads"):
        if read == "dynsym":
            hostile_elf(path, b".dynsym", 11)      # SHT_DYNSYM
            DynamicSymbols.from_path(path)
        else:
            hostile_elf(path, b".symtab", 2)       # SHT_SYMTAB
            functions_named(path, frozenset({"malloc"}))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < MAX_SECTION_SIZE // 1024 // 4, grown_kib
    assert os.stat(path).st_blocks * 512 < 1 << 20   # the file really is sparse
