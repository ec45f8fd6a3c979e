"""Exported symbols of a shared object or executable: .dynsym looked up by GNU hash.

A hash lookup reads a handful of entries where iterating libc's .dynsym would
decode thousands; only default symbol versions bind (never memcpy@GLIBC_2.2.5).
"""

import struct

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from hotpatch.elf.sections import section_data
from hotpatch.errors import ELFFormatError

_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
STT_TLS = 6
STT_GNU_IFUNC = 10
VERSYM_HIDDEN = 0x8000
SHN_UNDEF = 0


def gnu_hash(name: bytes) -> int:
    h = 5381
    for c in name:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


class DynamicSymbols:
    def __init__(self, dynsym: bytes, dynstr: bytes, gnu_hash_data: bytes | None,
                 versym: bytes | None, relas: list[bytes], verdef: bytes | None = None):
        self.dynsym, self.dynstr, self.versym, self.relas = dynsym, dynstr, versym, relas
        self.versions = _version_names(verdef, dynstr) if verdef else {}   # version index -> name
        self.count = len(dynsym) // _SYM.size
        self._table: dict[bytes, list[int]] | None = None
        if gnu_hash_data and len(gnu_hash_data) >= 16:
            nbuckets, self.symoffset, bloom_size, _ = struct.unpack_from("<IIII", gnu_hash_data)
            buckets_at = 16 + 8 * bloom_size
            self.nbuckets = nbuckets
            self.buckets = struct.unpack_from(f"<{nbuckets}I", gnu_hash_data, buckets_at)
            self.chains_at = buckets_at + 4 * nbuckets
            self.hash_data = gnu_hash_data
        else:
            self.nbuckets = 0

    @classmethod
    def from_path(cls, path: str) -> "DynamicSymbols":
        try:
            with open(path, "rb") as f:
                elf = ELFFile(f)

                def data(name):
                    sec = elf.get_section_by_name(name)
                    return (section_data(sec, path) if sec is not None and sec.header["sh_type"] != "SHT_NOBITS"
                            else None)
                relas = [d for d in (data(".rela.plt"), data(".rela.dyn")) if d]
                return cls(data(".dynsym") or b"", data(".dynstr") or b"", data(".gnu.hash"),
                           data(".gnu.version"), relas, data(".gnu.version_d"))
        except (ELFError, OSError, ValueError, struct.error) as e:
            raise ELFFormatError(f"cannot read dynamic symbols of {path}: {e}") from e

    def _name(self, st_name: int) -> bytes:
        end = self.dynstr.find(b"\0", st_name)
        return self.dynstr[st_name:end if end >= 0 else len(self.dynstr)]

    def _entry(self, index: int):
        return _SYM.unpack_from(self.dynsym, index * _SYM.size)

    def _usable(self, index: int) -> bool:
        st_name, st_info, _, st_shndx, _, _ = self._entry(index)
        bind = st_info >> 4
        if st_shndx == SHN_UNDEF or bind not in (1, 2, 10):   # GLOBAL, WEAK, GNU_UNIQUE
            return False
        if self.versym and 2 * index + 2 <= len(self.versym):
            (ver,) = struct.unpack_from("<H", self.versym, 2 * index)
            if ver & VERSYM_HIDDEN:
                return False
        return True

    def lookup(self, name: str) -> tuple[int, bool] | None:
        """(st_value, is_ifunc) of the default definition of `name`, or None; `name@VERSION` (what
        .symver makes a reference to) asks for that version, default or not."""
        if "@" in name:
            return self._lookup_version(*name.split("@", 1))
        key = name.encode()
        for index in self._candidates(key):
            st_name, st_info, _, _, st_value, _ = self._entry(index)
            if self._name(st_name) == key and self._usable(index):
                return st_value, (st_info & 0xF) == STT_GNU_IFUNC
        return None

    def _lookup_version(self, name: str, version: str) -> tuple[int, bool] | None:
        key = name.encode()
        for index in self._candidates(key):
            st_name, st_info, _, st_shndx, st_value, _ = self._entry(index)
            if self._name(st_name) != key or st_shndx == SHN_UNDEF or not self.versym \
                    or 2 * index + 2 > len(self.versym):
                continue
            (ver,) = struct.unpack_from("<H", self.versym, 2 * index)
            if self.versions.get(ver & ~VERSYM_HIDDEN) == version.lstrip("@"):
                return st_value, (st_info & 0xF) == STT_GNU_IFUNC
        return None

    def preemptible(self, name: str) -> bool:
        """Whether `name` is exported with default visibility: another object's definition (an
        executable's copy of a variable, an LD_PRELOAD interposer) may take its place."""
        key = name.encode()
        for index in self._candidates(key):
            st_name, _, st_other, _, _, _ = self._entry(index)
            if self._name(st_name) == key and self._usable(index):
                return (st_other & 3) == 0
        return False

    def tls_value(self, name: str) -> int | None:
        """The offset in this module's TLS block of thread-local variable `name` it defines, or None."""
        key = name.encode()
        for index in self._candidates(key):
            st_name, st_info, _, _, st_value, _ = self._entry(index)
            if self._name(st_name) == key and self._usable(index) and (st_info & 0xF) == STT_TLS:
                return st_value
        return None

    def tlsdesc_slot(self, name: str, types: set[int]) -> int | None:
        """r_offset of the TLS descriptor the loader fills for thread-local variable `name`, if any."""
        key = name.encode()
        for data in self.relas:
            for r_offset, r_info, _ in _RELA.iter_unpack(data[:len(data) // 24 * 24]):
                sym = r_info >> 32
                if (r_info & 0xFFFFFFFF) in types and 0 < sym < self.count and self._name(self._entry(sym)[0]) == key:
                    return r_offset
        return None

    def module_id_slot(self, dtpmod_types: set[int]) -> int | None:
        """r_offset of a GOT slot the loader fills with this module's own TLS module id (a DTPMOD64
        relocation against one of its own symbols, or none), if it has one."""
        for data in self.relas:
            for r_offset, r_info, _ in _RELA.iter_unpack(data[:len(data) // 24 * 24]):
                sym = r_info >> 32
                if (r_info & 0xFFFFFFFF) in dtpmod_types and (sym == 0 or (
                        sym < self.count and self._entry(sym)[3] != SHN_UNDEF)):
                    return r_offset
        return None

    def extent(self, name: str) -> tuple[int, int] | None:
        """(st_value, st_size) of the default definition of `name`, or None."""
        key = name.encode()
        for index in self._candidates(key):
            st_name, _, _, _, st_value, st_size = self._entry(index)
            if self._name(st_name) == key and self._usable(index):
                return st_value, st_size
        return None

    def _candidates(self, key: bytes):
        if not self.nbuckets:
            if self._table is None:
                self._table = {}
                for i in range(1, self.count):
                    self._table.setdefault(self._name(self._entry(i)[0]), []).append(i)
            yield from self._table.get(key, [])
            return
        h = gnu_hash(key)
        index = self.buckets[h % self.nbuckets]
        if index < self.symoffset:
            return
        while index < self.count:
            pos = self.chains_at + 4 * (index - self.symoffset)
            if pos + 4 > len(self.hash_data):
                return
            (chain,) = struct.unpack_from("<I", self.hash_data, pos)
            if (chain | 1) == (h | 1):
                yield index
            if chain & 1:
                return
            index += 1

    def import_slot(self, name: str, got_types: set[int]) -> int | None:
        """r_offset of the GOT slot through which this module calls `name`, if it does."""
        key = name.encode()
        for data in self.relas:
            for r_offset, r_info, _ in _RELA.iter_unpack(data[:len(data) // 24 * 24]):
                sym = r_info >> 32
                if (r_info & 0xFFFFFFFF) in got_types and 0 < sym < self.count \
                        and self._name(self._entry(sym)[0]) == key:
                    return r_offset
        return None


def _version_names(verdef: bytes, dynstr: bytes) -> dict[int, str]:
    """Version index -> name, from .gnu.version_d (Elf64_Verdef records, each with its Verdaux)."""
    out: dict[int, str] = {}
    pos, seen = 0, 0
    while pos + 20 <= len(verdef) and seen < 4096:
        _version, _flags, index, cnt, _hash, aux, nxt = struct.unpack_from("<HHHHIII", verdef, pos)
        if cnt and pos + aux + 8 <= len(verdef):
            (name_off,) = struct.unpack_from("<I", verdef, pos + aux)
            end = dynstr.find(b"\0", name_off)
            out[index] = dynstr[name_off:end if end >= 0 else len(dynstr)].decode(errors="replace")
        if not nxt:
            break
        pos += nxt
        seen += 1
    return out
