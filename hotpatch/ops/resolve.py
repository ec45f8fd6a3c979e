"""`hotpatch info --resolve PID PATCHFILE`: where each name the patch uses binds in that process, and why.

Read only: the process is not stopped (its memory is read through /proc/PID/mem for the loader's link
map and import slots).
"""

import os

from hotpatch import patchfile
from hotpatch.arch import get_arch
from hotpatch.errors import HotpatchError
from hotpatch.link.linker import plan_layout
from hotpatch.process.maps import read_maps
from hotpatch.process.memory import Memory
from hotpatch.process.modules import ProcessSymbols, loaded_modules


def resolve_report(pid: int, patch_path: str) -> list[dict]:
    patch = patchfile.read(patch_path)
    arch = get_arch(patch.meta.arch)
    names = plan_layout(patch.obj, arch, header_size=4096).undefined
    mem = Memory(pid, writable=False)
    try:
        loaded = loaded_modules(pid, read_maps(pid), mem)
        symbols = ProcessSymbols(pid, loaded.modules, mem, arch.got_reloc_types)
        symbols.scope()
        order = "the loader's link map" if loaded.in_link_map else "address order (no link map)"
        out = []
        for name in names:
            own = patch.meta.target_symbols.get(name)
            if own is not None:
                out.append({"name": name, "module": patch.meta.target_path, "address": None,
                            "why": "the patched binary's own symbol, recorded at build"})
                continue
            try:
                address = symbols.resolve(name)
            except HotpatchError as e:
                out.append({"name": name, "module": None, "address": None, "why": e.line()})
                continue
            where = symbols.bound_in.get(name)
            kind = symbols.kinds.get(where or "", "")
            out.append({"name": name, "module": where, "address": hex(address) if address is not None else None,
                        "why": (f"first definition in the global scope ({kind}; {order})" if kind != "dlopen'ed"
                                else f"defined only by a dlopen'ed object ({order})")
                        if where else "not defined in the process (weak: binds to 0)"})
        return out
    finally:
        mem.close()


def describe(rows: list[dict]) -> list[str]:
    return [f"  {r['name']:<24} -> {os.path.basename(r['module']) if r['module'] else '-':<28} "
            f"{r['address'] or '':<16} {r['why']}" for r in rows]
