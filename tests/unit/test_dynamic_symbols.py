"""GNU-hash symbol lookup in libc (this host's, and the AArch64 cross libc) against a full scan of
its .dynsym: every exported name found at its address, IFUNCs flagged, names that only exist as
non-default (hidden) versions not found."""

import os

import pytest
from elftools.elf.elffile import ELFFile

from hotpatch.elf.dynamic import DynamicSymbols

LIBCS = {"x86_64": ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/x86_64-linux-gnu/lib/libc.so.6"],
         "aarch64": ["/lib/aarch64-linux-gnu/libc.so.6", "/usr/aarch64-linux-gnu/lib/libc.so.6"]}


def libc(arch):
    path = next((p for p in LIBCS[arch] if os.path.exists(p)), None)
    if path is None:
        pytest.skip(f"no {arch} libc here")
    return path


def full_scan(path):
    """(name -> address of its first default-version definition, names defined only as hidden versions)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        versym = elf.get_section_by_name(".gnu.version")
        visible, hidden = {}, set()
        for i, sym in enumerate(elf.get_section_by_name(".dynsym").iter_symbols()):
            if sym["st_shndx"] == "SHN_UNDEF" or sym["st_info"]["bind"] not in ("STB_GLOBAL", "STB_WEAK"):
                continue
            ndx = versym.get_symbol(i).entry["ndx"]
            if isinstance(ndx, int) and ndx & 0x8000:
                hidden.add(sym.name)
            else:
                visible.setdefault(sym.name, sym["st_value"])
    return visible, hidden - set(visible)


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_gnu_hash_lookup_matches_full_scan(arch):
    path = libc(arch)
    table = DynamicSymbols.from_path(path)
    visible, only_hidden = full_scan(path)
    assert len(visible) > 2000
    assert {"printf", "snprintf", "malloc", "stdout", "memcpy", "pthread_create"} <= set(visible)
    wrong = {name: table.lookup(name) for name, address in visible.items()
             if (table.lookup(name) or (None,))[0] != address}
    assert wrong == {}
    assert only_hidden and {name: table.lookup(name) for name in only_hidden} == dict.fromkeys(only_hidden)
    assert table.lookup("memcpy")[1] is True           # an IFUNC
    assert table.lookup("printf")[1] is False
    assert table.lookup("no_such_symbol_at_all") is None
