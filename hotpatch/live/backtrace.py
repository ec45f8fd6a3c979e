"""Backtraces in symbol names, for the messages that report a busy thread.

Built after the threads run again: symbol tables are read only when there is
something to report. A pc in a patch image is named after the patch function
it falls in; a pc nowhere known is shown as an address.
"""

import bisect
import os

from hotpatch.elf.symbols import SymbolTable, load_symbol_table
from hotpatch.errors import ELFFormatError
from hotpatch.live.records import PatchRecord
from hotpatch.process.maps import Mapping
from hotpatch.process.modules import Module, module_file


class Symbolizer:
    def __init__(self, pid: int, modules: list[Module], maps: list[Mapping], applied: list[PatchRecord]):
        self.pid = pid
        self.modules = {m.path: m for m in modules}
        self._tables: dict[str, SymbolTable | None] = {}
        self._maps = sorted(maps, key=lambda m: m.start)
        self._map_starts = [m.start for m in self._maps]
        self._patch_functions = sorted((f.new, f.name, r.id) for r in applied for f in r.functions)
        self._images = [(r.code[0], r.code[1], r.id) for r in applied]

    def name(self, pc: int) -> str:
        for start, end, record_id in self._images:
            if start <= pc < end:
                i = bisect.bisect_right(self._patch_functions, (pc, "\uffff", 1 << 62)) - 1
                if i >= 0 and self._patch_functions[i][2] == record_id:
                    return f"{self._patch_functions[i][1]} (patch {record_id})"
                return f"patch {record_id} code {pc:#x}"
        mapping = self._mapping(pc)
        module = self.modules.get(mapping.path) if mapping is not None else None
        if module is None:
            # By mapping, not by a module's span: ld.so's span encloses the vdso.
            where = f" in {mapping.path}" if mapping and mapping.path else ""
            return f"{pc:#x}{where}"
        table = self._table(module)
        sym = table.at(pc - module.bias) if table else None
        if sym is None:
            return f"{os.path.basename(module.path)}+{pc - module.bias:#x}"
        return sym.name

    def backtrace(self, pcs: list[int]) -> list[str]:
        return [self.name(pc) for pc in pcs]

    def _mapping(self, pc: int) -> Mapping | None:
        i = bisect.bisect_right(self._map_starts, pc) - 1
        if i >= 0 and pc < self._maps[i].end:
            return self._maps[i]
        return None

    def _table(self, module: Module) -> SymbolTable | None:
        if module.path not in self._tables:
            try:
                self._tables[module.path] = load_symbol_table(module_file(self.pid, module))
            except ELFFormatError:
                self._tables[module.path] = None   # an address is shown instead of a name
        return self._tables[module.path]
