"""The modules a process has loaded, and resolving names in them the way ld.so would."""

import os
from dataclasses import dataclass, field

from hotpatch.elf import filecache
from hotpatch.elf.dynamic import DynamicSymbols
from hotpatch.elf.image import PT_DYNAMIC, PT_TLS, ElfImage, load_bias
from hotpatch.elf.needed import soname_and_needed
from hotpatch.errors import ELFFormatError, SymbolNotFound, TraceError
from hotpatch.link.linker import IMAGE_TLSDESC_ENTRY
from hotpatch.process import ifunc_choice
from hotpatch.process.linkmap import link_map
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
    modules: list[Module]            # the main executable first, then in the loader's order (linkmap.py)
    unreadable: dict[str, str]       # path: why its ELF headers could not be read
    in_link_map: bool = False        # that order is the loader's own (else address order)
    _symbols: "ProcessSymbols | None" = field(default=None, repr=False, compare=False)

    def symbols(self, pid: int, mem: Memory, got_reloc_types: set[int]) -> "ProcessSymbols":
        """Names resolved in these modules: one lookup shared by every step of an operation, its
        symbol tables and scope worked out once."""
        if self._symbols is None:
            self._symbols = ProcessSymbols(pid, self.modules, mem, got_reloc_types)
        return self._symbols


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
    ordered = _loader_order(pid, modules, mem)
    return LoadedModules(ordered or modules, unreadable, ordered is not None)


def _loader_order(pid: int, modules: list[Module], mem: Memory) -> list[Module] | None:
    """The modules in the loader's link map order (the executable first), those it does not list after
    them by address; None without a readable link map."""
    if not modules:
        return None
    exe = modules[0]
    dynamic = next((p for p in exe.image.phdrs if p.p_type == PT_DYNAMIC), None)
    if dynamic is None:
        return None
    entries = link_map(mem.read, exe.bias + dynamic.p_vaddr, lambda: _r_debug(pid, modules))
    if not entries:
        return None
    ordered: list[Module] = []
    for l_addr, l_ld in entries:   # by load bias first: an object's span can hold another (the vDSO)
        m = next((m for m in modules if m.bias == l_addr and m.start <= l_ld < m.end), None)
        if m is not None and m not in ordered:
            ordered.append(m)
    if not ordered or ordered[0] is not exe:
        return None
    return ordered + [m for m in modules if m not in ordered]


def _r_debug(pid: int, modules: list[Module]) -> int | None:
    """The address of the loader's `_r_debug` (exported by ld.so), when DT_DEBUG was not filled."""
    for m in modules[1:]:
        if "ld-linux" not in os.path.basename(m.path) and "/ld-" not in m.path:
            continue
        try:
            found = filecache.parsed(module_file(pid, m), DynamicSymbols.from_path).lookup("_r_debug")
        except ELFFormatError:
            return None
        return m.bias + found[0] if found else None
    return None


def module_file(pid: int, module: Module) -> str:
    """A path that opens the module's file even if deleted or in another mount namespace."""
    m = module.file_mapping
    candidate = f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
    if os.path.exists(candidate):
        return candidate
    return f"/proc/{pid}/root{module.path.removesuffix(' (deleted)')}"


class ProcessSymbols:
    """Resolve a name as the loader would: in its global scope (the executable, preloaded objects, the
    libraries they need, in link map order), then in the objects dlopen()ed since, in that order."""

    def __init__(self, pid: int, modules: list[Module], mem: Memory, got_reloc_types: set[int]):
        self.pid, self.modules, self.mem = pid, modules, mem
        self.got_reloc_types = got_reloc_types
        self._tables: dict[str, DynamicSymbols | None] = {}
        self.unreadable: dict[str, str] = {}   # module path: why its symbols could not be read
        self._scope: list[Module] | None = None
        self.kinds: dict[str, str] = {}        # module path: executable, preloaded, needed, dlopen'ed
        self.bound_in: dict[str, str] = {}     # name: the module it bound in (for info --resolve)

    def _table(self, module: Module) -> DynamicSymbols | None:
        if module.path not in self._tables:
            try:
                self._tables[module.path] = filecache.parsed(module_file(self.pid, module),
                                                                 DynamicSymbols.from_path)
            except ELFFormatError as e:
                self._tables[module.path] = None
                self.unreadable[module.path] = e.message
        return self._tables[module.path]

    def scope(self) -> list[Module]:
        """The modules in search order: the global scope first, then the rest."""
        if self._scope is None:
            self._scope, self.kinds = _global_first(self.pid, self.modules)
        return self._scope

    def resolve(self, name: str) -> int | None:
        """Address of `name`, or None when no module defines it (and every module could be read)."""
        hits = []
        for module in self.modules:
            table = self._table(module)
            found = table.lookup(name) if table else None
            if found is not None:
                hits.append((module, found))
        if len(hits) > 1:   # defined twice: which one the loader binds is a matter of scope
            order = {m.path: i for i, m in enumerate(self.scope())}
            hits.sort(key=lambda h: order.get(h[0].path, len(order)))
        for module, (value, is_ifunc) in hits[:1]:
            self.bound_in[name] = module.path
            if is_ifunc:
                return self.bound_ifunc(name, module)
            return module.bias + value
        if self.unreadable:
            path, why = next(iter(self.unreadable.items()))
            raise SymbolNotFound(f"{name} was not found, and the symbols of {path} could not be read: {why}",
                                 "check that the process's libraries are intact")
        return None

    def resolve_tls(self, name: str, arch) -> tuple[int, int]:
        """A thread-local variable of a loaded module, as the patch's access takes it (tls_pair); the
        first definition in scope order."""
        for module in self.scope():
            table = self._table(module)
            offset = table.tls_value(name) if table else None
            if offset is not None:
                self.bound_in[name] = module.path
                return self.tls_pair(module, name, offset, arch)
        raise SymbolNotFound(f"thread-local variable {name} is defined in no module of the process",
                             "declare only variables the target or its libraries define")

    def tls_pair(self, module: Module, name: str, offset: int, arch) -> tuple[int, int]:
        """x86-64: (module id, offset) for __tls_get_addr. AArch64: a TLS descriptor (entry, argument):
        the loader's own descriptor of the variable in its module's GOT, or for the executable's static
        TLS the image's entry with the variable's offset from the thread pointer (TCB of 16 bytes, then
        the executable's block aligned as its PT_TLS says)."""
        if not arch.tlsdesc_return:
            return self.module_id(module, arch.dtpmod_reloc_types), offset
        table = self._table(module)
        slot = table.tlsdesc_slot(name, arch.tlsdesc_reloc_types) if table else None
        if slot is not None:
            data = self.mem.read(module.bias + slot, 16)
            return int.from_bytes(data[:8], "little"), int.from_bytes(data[8:], "little")
        tls = next((p for p in module.image.phdrs if p.p_type == PT_TLS), None)
        if module is self.modules[0] and tls is not None:
            align = max(tls.p_align, 1)
            return IMAGE_TLSDESC_ENTRY, (16 + align - 1) // align * align + offset
        raise SymbolNotFound(f"thread-local variable {name} of {os.path.basename(module.path)} has no descriptor "
                             "the loader filled (the library never reaches it through one itself)",
                             "use the variable through a function of that library instead")

    def module_id(self, module: Module, dtpmod_types: set[int]) -> int:
        """The TLS module id the loader gave `module`: 1 for an executable with TLS; for a library, read
        from a slot of its own GOT the loader filled with it."""
        if module is self.modules[0] and any(p.p_type == PT_TLS for p in module.image.phdrs):
            return 1
        table = self._table(module)
        slot = table.module_id_slot(dtpmod_types) if table else None
        if slot is None:
            raise SymbolNotFound(f"the TLS module id of {os.path.basename(module.path)} cannot be read: it has "
                                 "no slot the loader fills with it (its own TLS accesses are all initial-exec)",
                                 "use the variable through a function of that library instead")
        value = int.from_bytes(self.mem.read(module.bias + slot, 8), "little")
        if not 0 < value < 1 << 20:
            raise SymbolNotFound(f"the TLS module id slot of {os.path.basename(module.path)} holds {value}",
                                 "apply once the library is loaded and its TLS set up")
        return value

    def bound_ifunc(self, name: str, defining: Module) -> int:
        """The implementation of IFUNC `name` of `defining` this process calls."""
        # An IFUNC symbol's value is its resolver, which must not be called in
        # the target; use the implementation the process already bound (or its
        # PLT entry, which binds lazily): the GOT slot of a module importing it.
        for module in self.modules:
            table = self._table(module)
            slot = table.import_slot(name, self.got_reloc_types) if table else None
            if slot is not None:
                return int.from_bytes(self.mem.read(module.bias + slot, 8), "little")
        # None imports it: the same library loaded in hotpatch itself (same build-id) on the same machine
        # chose the same implementation, at the same offset, unless the process tunes glibc differently.
        why = ifunc_choice.unavailable(self.pid, defining.image.build_id)
        if why is None:
            offset = ifunc_choice.own_offset(name, defining.image.build_id)
            if offset is not None:
                return defining.bias + offset
            why = f"hotpatch's own {os.path.basename(defining.path)} does not resolve it"
        raise SymbolNotFound(
            f"{name} is an IFUNC in {os.path.basename(defining.path)}, no loaded module imports it, and the "
            f"implementation the loader would choose cannot be told: {why}",
            "call a non-IFUNC function instead, or apply once the program has called it")

def _global_first(pid: int, modules: list[Module]) -> tuple[list[Module], dict[str, str]]:
    """Link map order with the global scope first: the executable and what it needs, breadth-first, and
    the objects preloaded before them (between the executable and its first needed library in the link
    map); objects outside that closure were dlopen()ed, and come after. Unreadable dynamic sections
    leave the order as it is. Also each module's part: executable, preloaded, needed, dlopen'ed."""
    if len(modules) < 2:
        return modules, {m.path: "executable" for m in modules}
    names: dict[str, tuple[str | None, list[str]]] = {}
    for m in modules:
        try:
            names[m.path] = filecache.parsed(module_file(pid, m), soname_and_needed)
        except ELFFormatError:
            return modules, {}
    by_name: dict[str, Module] = {}
    for m in modules:
        soname = names[m.path][0]
        by_name.setdefault(os.path.basename(m.path), m)
        if soname:
            by_name.setdefault(soname, m)

    def closure(roots: list[Module]) -> list[Module]:
        out, queue = [], list(roots)
        while queue:
            m = queue.pop(0)
            if m in out:
                continue
            out.append(m)
            queue += [by_name[n] for n in names[m.path][1] if n in by_name]
        return out

    exe_needs = closure([modules[0]])
    interpreter = [m for m in modules if "ld-linux" in os.path.basename(m.path)]
    preloaded = []
    for m in modules[1:]:
        if m in interpreter:
            continue   # the loader itself: its place in the list says nothing of preloading
        if m in exe_needs:
            break
        preloaded.append(m)
    startup = closure([modules[0], *preloaded])
    kinds = {m.path: "executable" if m is modules[0] else "preloaded" if m in preloaded else
             "needed" if m in startup else "dlopen'ed" for m in modules}
    return [m for m in modules if m in startup] + [m for m in modules if m not in startup], kinds
