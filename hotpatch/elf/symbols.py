"""Symbol tables of target binaries (.symtab, .dynsym, or a debug file by build-id)."""

import bisect
import os
import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from hotpatch.elf.image import ElfImage
from hotpatch.elf.sections import check_size, section_data
from hotpatch.errors import ELFFormatError

DEFAULT_DEBUG_DIRS = ("/usr/lib/debug",)

_KINDS = {"STT_FUNC": "func", "STT_OBJECT": "object", "STT_GNU_IFUNC": "ifunc",
          "STT_LOOS": "ifunc", "STT_TLS": "tls", "STT_NOTYPE": "notype"}
_BINDS = {"STB_LOCAL": "local", "STB_GLOBAL": "global", "STB_WEAK": "weak",
          "STB_GNU_UNIQUE": "global", "STB_LOOS": "global"}


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int
    kind: str       # func, object, ifunc, tls, notype
    bind: str       # local, global, weak
    file: str | None  # the STT_FILE a local symbol follows

    def describe(self) -> str:
        where = f" in {self.file}" if self.file else ""
        return f"{self.bind} {self.kind} {self.name}{where} at {self.value:#x}"


def strip_version(name: str) -> str:
    """'stdout@GLIBC_2.2.5' and 'memcpy@@GLIBC_2.14' name the same C symbol."""
    at = name.find("@")
    return name if at <= 0 else name[:at]


def read_elf_symbols(elf: ELFFile, section_name: str) -> list[Symbol]:
    section = elf.get_section_by_name(section_name)
    if section is None or not hasattr(section, "iter_symbols"):
        return []
    check_size(section, getattr(elf.stream, "name", "an ELF file"))
    out, current_file = [], None
    for sym in section.iter_symbols():
        info = sym["st_info"]
        if info["type"] == "STT_FILE":
            current_file = sym.name or None
            continue
        shndx = sym["st_shndx"]
        if shndx in ("SHN_UNDEF", "SHN_COMMON") or not sym.name:
            continue
        if info["type"] == "STT_SECTION":
            continue
        bind = _BINDS.get(info["bind"], "global")
        out.append(Symbol(strip_version(sym.name), sym["st_value"], sym["st_size"],
                          _KINDS.get(info["type"], "notype"), bind,
                          current_file if bind == "local" else None))
    return out


class SymbolTable:
    """Defined symbols of one binary; lookups by C name with ambiguity reported."""

    def __init__(self, symbols: list[Symbol], source: str, stripped: bool = False,
                 debug_dirs: tuple[str, ...] = ()):
        self.source = source
        self.stripped = stripped
        self.debug_dirs = debug_dirs
        self._by_name: dict[str, list[Symbol]] = {}
        seen = set()
        for s in symbols:
            key = (s.name, s.value, s.kind)
            if key in seen:
                continue
            seen.add(key)
            self._by_name.setdefault(s.name, []).append(s)
        # Sorted starts let a zero-size symbol (hand-written assembly) take the
        # gap to the next symbol as its extent.
        self._clones: dict[str, list[Symbol]] | None = None
        self._starts = sorted({s.value for s in symbols if s.kind in ("func", "ifunc", "notype")})
        self._code: list[Symbol] | None = None   # code symbols by address, built on first at()

    def candidates(self, name: str, kinds: tuple[str, ...] | None = None) -> list[Symbol]:
        found = self._by_name.get(name, [])
        return [s for s in found if kinds is None or s.kind in kinds]

    def names(self) -> list[str]:
        return list(self._by_name)

    def extent(self, sym: Symbol) -> int:
        return sym.size or self.gap_after(sym)

    def gap_after(self, sym: Symbol) -> int:
        """Bytes from the end of `sym` to the next code symbol (0 if none follows)."""
        end = sym.value + sym.size
        i = bisect.bisect_right(self._starts, end - 1 if sym.size else sym.value)
        return self._starts[i] - end if i < len(self._starts) else 0

    def at(self, vaddr: int) -> Symbol | None:
        """The function containing link-time address `vaddr` (a global name preferred over a local alias)."""
        if self._code is None:
            code = [s for syms in self._by_name.values() for s in syms if s.kind in ("func", "ifunc") and s.name]
            code.sort(key=lambda s: (s.value, s.bind == "local"))
            self._code = code
            self._code_starts = [s.value for s in code]
        i = bisect.bisect_right(self._code_starts, vaddr) - 1
        while i >= 0 and self._code[i].value == self._code[max(i - 1, 0)].value and i > 0:
            i -= 1   # the first (global) of the aliases at that address
        if i < 0:
            return None
        sym = self._code[i]
        return sym if sym.value <= vaddr < sym.value + max(self.extent(sym), 1) else None

    def end_before(self, vaddr: int) -> int | None:
        """Where the code before `vaddr` ends: the largest end of a function starting below it."""
        self.at(vaddr)   # builds the sorted index
        assert self._code is not None
        i = bisect.bisect_left(self._code_starts, vaddr)
        ends = [s.value + s.size for s in self._code[max(0, i - 64):i]]
        return max(ends) if ends else None

    def aliases(self, vaddr: int) -> list[Symbol]:
        """Every function symbol that starts at link-time address `vaddr` (aliases, folded functions)."""
        self.at(vaddr)   # builds the sorted index
        assert self._code is not None
        i = bisect.bisect_left(self._code_starts, vaddr)
        out = []
        while i < len(self._code) and self._code[i].value == vaddr:
            out.append(self._code[i])
            i += 1
        return out

    def clones_of(self, name: str) -> list[Symbol]:
        """Compiler clones (f.isra.0, f.constprop.0, f.part.0) that callers may use instead of f."""
        if self._clones is None:
            self._clones = {}
            for n, syms in self._by_name.items():
                base, dot, _ = n.partition(".")
                if dot and base and not n.endswith(".cold"):
                    self._clones.setdefault(base, []).extend(s for s in syms if s.kind == "func")
        return self._clones.get(name, [])


def find_debug_file(build_id: str | None, debug_dirs: tuple[str, ...]) -> str | None:
    if not build_id or len(build_id) < 4:
        return None
    for d in debug_dirs:
        path = os.path.join(d, ".build-id", build_id[:2], build_id[2:] + ".debug")
        if os.path.isfile(path):
            return path
    return None


def debug_dirs_from_env() -> tuple[str, ...]:
    extra = os.environ.get("HOTPATCH_DEBUG_DIRS", "")
    return tuple(p for p in extra.split(":") if p) + DEFAULT_DEBUG_DIRS


def load_symbol_table(path: str, debug_dirs: tuple[str, ...] | None = None) -> SymbolTable:
    """The fullest symbol table available for a binary.

    .symtab when present; otherwise the debug file found by build-id (its
    .symtab carries the static symbols a stripped binary lost); .dynsym always
    adds the exported names.
    """
    if debug_dirs is None:
        debug_dirs = debug_dirs_from_env()
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            symbols = read_elf_symbols(elf, ".symtab")
            source = path
            dyn = read_elf_symbols(elf, ".dynsym")
    except (ELFError, OSError, ValueError) as e:
        raise ELFFormatError(f"cannot read symbols of {path}: {e}") from e
    stripped = not symbols
    if stripped:
        debug = find_debug_file(ElfImage.from_path(path).build_id, debug_dirs)
        if debug:
            try:
                with open(debug, "rb") as f:
                    symbols = read_elf_symbols(ELFFile(f), ".symtab")
                source = debug
                stripped = False
            except (ELFError, OSError, ValueError) as e:
                raise ELFFormatError(f"cannot read debug file {debug}: {e}") from e
        else:
            source = f"{path} is stripped and no debug file matches its build-id"
    return SymbolTable(symbols + dyn, source, stripped, debug_dirs)


_SYM = struct.Struct("<IBBHQQ")
STT_FUNC, STT_GNU_IFUNC = 2, 10


def functions_named(path: str, names: frozenset[str]) -> list[tuple[str, int, int]] | None:
    """(name, st_value, st_size) of the functions called `names` in .symtab (None when there is none).

    A raw scan of the table: pyelftools' symbol objects cost far more than
    the few names looked for, and libc's .symtab has thousands.
    """
    wanted = {n.encode() for n in names}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None or symtab["sh_type"] != "SHT_SYMTAB":
                return None
            strtab = section_data(elf.get_section(symtab["sh_link"]), path)
            table = section_data(symtab, path)
    except (ELFError, OSError, ValueError) as e:
        raise ELFFormatError(f"cannot read symbols of {path}: {e}") from e
    out = []
    for st_name, st_info, _, st_shndx, st_value, st_size in _SYM.iter_unpack(table[:len(table) // 24 * 24]):
        if st_info & 0xF not in (STT_FUNC, STT_GNU_IFUNC) or not st_shndx:
            continue
        end = strtab.find(b"\0", st_name)
        name = strtab[st_name:end]
        if name in wanted:
            out.append((name.decode(), st_value, st_size))
    return out
