"""The modules a process has loaded, and resolving names in them the way ld.so would."""

import os
from dataclasses import dataclass

from hotpatch.elf.dynamic import DynamicSymbols
from hotpatch.elf.image import ElfImage, load_bias
from hotpatch.errors import ELFFormatError, SymbolNotFound, TraceError
from hotpatch.process.maps import Mapping
from hotpatch.process.memory import Memory

ELF_MAGIC = b"\x7fELF"


@dataclass
class Module:
    path: str
    start: int          # lowest mapped address
    end: int            # highest mapped address
    map_start: int      # where file offset 0 is mapped
    image: ElfImage
    bias: int
    file_mapping: Mapping


@dataclass
class LoadedModules:
    modules: list[Module]            # the main executable first, then in address order
    unreadable: dict[str, str]       # path: why its ELF headers could not be read


def loaded_modules(pid: int, maps: list[Mapping], mem: Memory) -> LoadedModules:
    """ELF files mapped in the process.

    A mapped file that is not ELF (a locale archive, a font) is no module; an
    ELF file whose headers cannot be read is reported, never dropped silently.
    """
    by_path: dict[str, list[Mapping]] = {}
    for m in maps:
        if m.path.startswith("/") and m.inode:
            by_path.setdefault(m.path, []).append(m)
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None
    modules, unreadable = [], {}
    for path, ms in by_path.items():
        first = next((m for m in ms if m.offset == 0), None)
        if first is None or not first.readable or mem.read_available(first.start, 4) != ELF_MAGIC:
            continue
        try:
            image = ElfImage.from_memory_reader(mem.read, first.start)
            bias = load_bias(first.start, image.phdrs)
        except (ELFFormatError, TraceError) as e:
            unreadable[path] = e.message
            continue
        modules.append(Module(path, min(m.start for m in ms), max(m.end for m in ms),
                              first.start, image, bias, first))
    modules.sort(key=lambda mod: (mod.path != exe, mod.start))
    return LoadedModules(modules, unreadable)


def module_file(pid: int, module: Module) -> str:
    """A path that opens the module's file even if deleted or in another mount namespace."""
    m = module.file_mapping
    candidate = f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
    if os.path.exists(candidate):
        return candidate
    return f"/proc/{pid}/root{module.path.removesuffix(' (deleted)')}"


class ProcessSymbols:
    """Resolve a name in link-map-like order: the executable, then libraries."""

    def __init__(self, pid: int, modules: list[Module], mem: Memory, got_reloc_types: set[int]):
        self.pid, self.modules, self.mem = pid, modules, mem
        self.got_reloc_types = got_reloc_types
        self._tables: dict[str, DynamicSymbols | None] = {}
        self.unreadable: dict[str, str] = {}   # module path: why its symbols could not be read

    def _table(self, module: Module) -> DynamicSymbols | None:
        if module.path not in self._tables:
            try:
                self._tables[module.path] = DynamicSymbols.from_path(module_file(self.pid, module))
            except ELFFormatError as e:
                self._tables[module.path] = None
                self.unreadable[module.path] = e.message
        return self._tables[module.path]

    def resolve(self, name: str) -> int | None:
        """Address of `name`, or None when no module defines it (and every module could be read)."""
        for module in self.modules:
            table = self._table(module)
            found = table.lookup(name) if table else None
            if found is None:
                continue
            value, is_ifunc = found
            if is_ifunc:
                return self._bound_ifunc(name, module)
            return module.bias + value
        if self.unreadable:
            path, why = next(iter(self.unreadable.items()))
            raise SymbolNotFound(f"{name} was not found, and the symbols of {path} could not be read: {why}",
                                 "check that the process's libraries are intact")
        return None

    def _bound_ifunc(self, name: str, defining: Module) -> int:
        # An IFUNC symbol's value is its resolver, which must not be called in
        # the target; use the implementation the process already bound (or its
        # PLT entry, which binds lazily): the GOT slot of a module importing it.
        for module in self.modules:
            table = self._table(module)
            slot = table.import_slot(name, self.got_reloc_types) if table else None
            if slot is not None:
                return int.from_bytes(self.mem.read(module.bias + slot, 8), "little")
        raise SymbolNotFound(
            f"{name} is an IFUNC in {os.path.basename(defining.path)} and no loaded module imports it",
            "call a non-IFUNC function instead, or have the target use it")
