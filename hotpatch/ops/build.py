"""`hotpatch build`: compile patch sources against a binary into a patch file.

Everything that can be decided without the process is decided here, so that
apply has little to do and a bad patch fails before any service is touched:
which functions are replaced, the expected original bytes, and which symbols
bind to the binary (static ones included).
"""

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from hotpatch import patchfile
from hotpatch.arch import arch_for_machine, clobbers, get_arch
from hotpatch.arch.base import Arch
from hotpatch.diff.dwarf import producers
from hotpatch.elf.dynamic import DynamicSymbols
from hotpatch.elf.image import PT_INTERP, ElfImage
from hotpatch.elf.irelative import irelative_slots
from hotpatch.elf.needed import needed_closure, soname_and_needed
from hotpatch.elf.relocatable import RelocatableObject, parse_relocatable
from hotpatch.elf.symbols import Symbol, SymbolTable, find_debug_file, load_symbol_table
from hotpatch.errors import AmbiguousSymbol, ELFFormatError, FunctionTooShort, InvalidPatch, SymbolNotFound, UsageError
from hotpatch.link.linker import GOT_SYMBOL, plan_layout
from hotpatch.process import ifunc_choice  # reads only hotpatch's own process

FILE_LOCAL = re.compile(r"(.+) \((.+)\)")
# -ffunction-sections keeps each function apart for the linker; unwind
# tables let unwinders (hotpatch's activeness check first) walk patch frames.
BASE_CFLAGS = ["-c", "-O2", "-fPIC", "-fno-common", "-ffunction-sections", "-fdata-sections",
               "-fasynchronous-unwind-tables", "-fno-ident"]


def pick_compiler(arch: Arch) -> str:
    """$CC, else gcc for the machine hotpatch runs on, else the architecture's cross compiler."""
    if os.environ.get("CC"):
        return os.environ["CC"]
    if arch.name == os.uname().machine:
        return "gcc"
    if shutil.which(arch.cross_compiler):
        return arch.cross_compiler
    raise UsageError(f"no compiler for {arch.name} binaries", f"install {arch.cross_compiler} or set CC")


def compile_sources(sources: list[str], cc: str, cflags: list[str], workdir: str) -> bytes:
    objects = []
    for i, src in enumerate(sources):
        if not os.path.isfile(src):
            raise UsageError(f"patch source {src} does not exist")
        out = os.path.join(workdir, f"{i}.o")
        _run([*shlex.split(cc), *BASE_CFLAGS, *cflags, "-o", out, src], f"compiling {src}")
        objects.append(out)
    if len(objects) == 1:
        combined = objects[0]
    else:
        combined = os.path.join(workdir, "patch.o")
        _run([*shlex.split(cc), "-r", "-nostdlib", "-o", combined, *objects], "combining the patch objects")
    with open(combined, "rb") as f:
        return f.read()


def _run(argv: list[str], what: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise UsageError(f"{what}: compiler {argv[0]} not found", "install gcc or set CC") from e
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise InvalidPatch(f"{what} failed ({argv[0]} exit {proc.returncode}); see the diagnostics above")


def _ifunc_implementation(name: str, binary_path: str, image: ElfImage, table: SymbolTable) -> Symbol:
    """The function an IFUNC of the binary resolves to on this machine: the same library loaded in hotpatch
    itself (same build-id) gives its loader's choice, without running the binary's resolver anywhere."""
    offset = ifunc_choice.own_offset(name, image.build_id) if image.build_id else None
    impl = table.at(offset) if offset is not None else None
    if impl is None:
        raise InvalidPatch(f"{name} is an IFUNC in {os.path.basename(binary_path)}: which implementation a "
                           "process uses is known only where that very library is loaded",
                           "build the patch on a machine that has the same build of it (build-id "
                           f"{(image.build_id or '?')[:16]}…), or replace the implementation by its name")
    return impl


def _hop_room(arch: Arch, table: SymbolTable, entry: int, binary: bytes, file_off: int) -> int:
    """Bytes of alignment padding right before `entry` a short function's jump may start in: nop or int3
    only (proven never executed: no function's range covers them), at least the arch's hop size."""
    n = arch.hop_size
    end = table.end_before(entry)
    if not n or end is None or not entry - 64 <= end <= entry - n or file_off < entry - end:
        return 0
    gap = binary[file_off - (entry - end):file_off]   # from the function before to this one: all padding?
    if arch.padding_length(gap) != len(gap) or any(table.at(entry - k) is not None for k in range(1, n + 1)):
        return 0
    return n


def pick_binary_symbol(table: SymbolTable, name: str, kinds: tuple[str, ...],
                       picks: dict[str, str]) -> Symbol | None:
    """One definition of `name` in the binary, the way C would bind an extern.

    A global definition wins (it is what an extern in a new translation unit
    means); otherwise a single file-local one; several file-local ones are
    ambiguous unless `--pick name=file.c` chooses.
    """
    found = table.candidates(name, kinds)
    if name in picks:
        found = [s for s in found if s.file and os.path.basename(s.file) == picks[name]]
        if not found:
            raise InvalidPatch(f"--pick {name}={picks[name]}: no such symbol in that file")
    if not found:
        return None
    globals_ = [s for s in found if s.bind != "local"]
    if len({s.value for s in globals_}) == 1:
        return globals_[0]
    if not globals_ and len({s.value for s in found}) == 1:
        return found[0]
    listing = "; ".join(s.describe() for s in found)
    raise AmbiguousSymbol(f"symbol {name} is ambiguous in the binary: {listing}",
                          f"choose one with --pick {name}=FILE.c")


def analyse(obj: RelocatableObject, binary_path: str, image: ElfImage, table: SymbolTable,
            picks: dict[str, str], sources: list[str], warn,
            only_new: frozenset[str] | set[str] = frozenset(), from_diff: bool = False) -> patchfile.PatchMeta:
    """`only_new`: functions that replace nothing, though the binary has one of that name (build --diff:
    a new global function of a.c, a static of the same name in b.c). `from_diff`: build --diff, which
    compares compiler clones itself (no warning about them)."""
    arch = get_arch(obj.machine)
    with open(binary_path, "rb") as f:
        binary_bytes = f.read()
    replace, new_functions, ifuncs = [], [], {}
    for fn in obj.defined_functions():
        if fn.bind == "local":
            continue
        local = FILE_LOCAL.fullmatch(fn.name)   # `helper (a.c)`: replaces a.c's file-local helper
        old = None if fn.name in only_new else \
            pick_binary_symbol(table, local[1], ("func",), {local[1]: local[2]}) if local else \
            pick_binary_symbol(table, fn.name, ("func",), picks)
        if old is None and local:
            raise SymbolNotFound(f"the binary has no function {local[1]} in {local[2]}",
                                 "is the binary built from this source?")
        if old is None and fn.name not in only_new and table.candidates(fn.name, ("ifunc",)):
            old = _ifunc_implementation(fn.name, binary_path, image, table)
            warn(f"note: {fn.name} is an IFUNC in {os.path.basename(binary_path)}: the patch replaces "
                 f"{old.name}, the implementation this machine's loader chooses (apply checks the process's)")
            ifuncs[fn.name] = old.name
        if old is None:
            new_functions.append(fn.name)
            continue
        size = table.extent(old)
        file_off = image.vaddr_to_offset(old.value)
        if file_off is None or size <= 0:
            raise InvalidPatch(f"function {fn.name} has no code in {binary_path}")
        code = binary_bytes[file_off:file_off + size]
        pad = arch.landing_pad(code)
        room = size
        if size < pad + arch.far_branch_size:
            # Alignment padding up to the next symbol is never executed: a jump may spill into it.
            gap = table.gap_after(old)
            # (but not into the last bytes before the next function: its own jump may need them, _hop_room)
            spill = arch.padding_length(binary_bytes[file_off + size:file_off + size + min(gap, 64)])
            after = table.at(old.value + size + gap)
            short_next = after is not None and after.size < arch.near_branch_size + 4   # may need a hop
            room += max(0, spill - arch.hop_size) if spill == gap and short_next else spill
        hop = 0
        if room < pad + arch.near_branch_size:
            hop = _hop_room(arch, table, old.value, binary_bytes, file_off)
            if not hop or room < pad + 2:
                raise FunctionTooShort(
                    f"function {fn.name} is {size} bytes, too short for a {arch.near_branch_size}-byte jump"
                    + (f" after its {pad}-byte landing pad" if pad else "")
                    + (f", and no {arch.hop_size} bytes of alignment padding precede it for one"
                       if arch.hop_size else ""),
                    "patch its callers instead (for a caller that never returns, main's loop: rebuild the "
                    "program with -fpatchable-function-entry=5 or with functions aligned)")
        base = local[1] if local else fn.name
        cold = [[c.value, c.size] for c in table.candidates(base + ".cold", ("func", "notype"))
                if c.file == old.file]
        for clone in table.clones_of(base) if not from_diff else ():
            warn(f"warning: the binary also has {clone.name}, a compiler clone of {base}; "
                 "its callers keep the old code unless the patch replaces them too "
                 "(`hotpatch build --diff` finds and replaces them)")
        replace.append(patchfile.ReplacedFunction(fn.name, old.value, size,
                                                  hashlib.sha256(binary_bytes[file_off - hop:file_off + room]
                                                                 ).hexdigest(), pad, room,
                                                  code[:32].hex(), cold, hop))
    if not replace:
        if table.stripped:
            raise InvalidPatch(f"the patch replaces no function of the binary: {table.source}",
                               "install the binary's debug file (looked in "
                               f"{', '.join(d + '/.build-id' for d in table.debug_dirs)}; "
                               "more with HOTPATCH_DEBUG_DIRS)")
        raise InvalidPatch("the patch replaces no function of the binary",
                           "define a function with external linkage whose name matches one in the binary")
    for sym in obj.symbols if not from_diff else ():   # build --diff copies changed constants on purpose
        if sym.kind == "object" and sym.bind != "local" and isinstance(sym.shndx, int) \
                and not sym.name.startswith("DW.ref.") and table.candidates(sym.name, ("object",)):
            warn(f"warning: the patch defines {sym.name}, which the binary also defines: the patch "
                 f"gets its own copy; declare it `extern` to use the binary's")
    binary_symbols, external = {}, []
    slots: dict[int, int] | None = None
    exported = _library_exports(binary_path)
    for name in sorted({s.name for s in obj.symbols if s.shndx == "UND" and s.name} - {GOT_SYMBOL}):
        local = FILE_LOCAL.fullmatch(name)   # `counter (a.c)`: a.c's file-local counter (build --diff)
        base, choose = (local[1], {local[1]: local[2]}) if local else (name, picks)
        sym = pick_binary_symbol(table, base, ("func", "object", "notype", "ifunc", "tls"), choose)
        if sym is None and local:
            raise SymbolNotFound(f"the binary has no {local[1]} in {local[2]}",
                                 "is the binary built from this source?")
        if sym is None:
            external.append(name)
        elif sym.kind == "tls":
            binary_symbols[name] = patchfile.TargetSymbol(sym.value, "tls")   # offset in the binary's TLS block
        elif sym.kind == "ifunc":
            # The binary's own IFUNC (a static binary's strlen): the slot its start code fills with the
            # implementation chosen for this machine; read at apply. Without one, resolved at apply.
            if slots is None:
                slots = irelative_slots(binary_path)
            slot = slots.get(sym.value)
            if slot is None:
                external.append(name)
            else:
                binary_symbols[name] = patchfile.TargetSymbol(slot, patchfile.IFUNC_SLOT)
        elif sym.bind != "local" and exported is not None and exported.preemptible(name):
            # A shared library's exported name binds as the library's own code binds it, through the
            # loader: an executable's copy of a variable, an interposer, come first (resolved at apply).
            external.append(name)
        else:
            binary_symbols[name] = patchfile.TargetSymbol(sym.value, sym.kind)
    _check_external(obj, external, binary_path, table, warn, exported)
    return patchfile.PatchMeta(
        target_library=image.is_pie and not any(p.p_type == PT_INTERP for p in image.phdrs), ifuncs=ifuncs,
        arch=obj.machine, target_path=os.path.abspath(binary_path), target_build_id=image.build_id,
        target_pie=image.is_pie, replace=replace, target_symbols=binary_symbols, external=external,
        new_functions=new_functions, sources=[os.path.basename(s) for s in sources])


def _library_exports(binary_path: str) -> DynamicSymbols | None:
    """A shared library's dynamic symbols (one with a DT_SONAME); None for an executable."""
    try:
        soname, _needed = soname_and_needed(binary_path)
        return DynamicSymbols.from_path(binary_path) if soname else None
    except ELFFormatError:
        return None


def _check_external(obj: RelocatableObject, external: list[str], binary_path: str,
                    table: SymbolTable, warn, exported: DynamicSymbols | None = None) -> None:
    """Names not in the binary must come from a library it loads: say so now, not at apply."""
    external = [n for n in external if not (exported is not None and exported.lookup(n))]
    if not external:
        return
    try:
        libs, missing = needed_closure(binary_path, get_arch(obj.machine).library_dirs)
    except ELFFormatError as e:
        raise InvalidPatch(f"{binary_path}: {e.message}") from e
    if missing:
        warn(f"warning: cannot check library symbols here ({', '.join(missing)} not found); "
             "they are resolved at apply")
        return
    tables = []
    for lib in libs:
        try:
            tables.append(DynamicSymbols.from_path(lib))
        except ELFFormatError:
            continue
    weak = {s.name for s in obj.symbols if s.shndx == "UND" and s.bind == "weak"}
    for name in external:
        if name in weak or any(t.lookup(name) for t in tables):
            continue
        clones = [c.name for c in table.clones_of(name)]
        hint = (f"the binary only has {', '.join(clones)} (a compiler clone)" if clones else
                "it may have been inlined or removed by the compiler when the binary was built")
        raise SymbolNotFound(
            f"{name} is defined neither in {os.path.basename(binary_path)} nor in the libraries it "
            f"loads ({', '.join(os.path.basename(lib) for lib in libs) or 'none'}): {hint}",
            f"define {name} in the patch itself (static)")


def _warn_inlining(binary: str, image: ElfImage, table: SymbolTable, meta: patchfile.PatchMeta, warn,
                   obj: RelocatableObject) -> None:
    """An optimised build without -flive-patching may have inlined or specialised a replaced function into
    callers the patch leaves alone: say so, from the compilers' own record (DW_AT_producer)."""
    path = binary if table.source == binary else (find_debug_file(image.build_id, table.debug_dirs) or binary)
    found = producers(path)
    optimised = [p for p in found if re.search(r" -O([1-3s]|fast)?\b", p) and " -O0" not in p]
    if optimised and not any("-flive-patching" in p for p in optimised):
        warn(f"warning: {os.path.basename(binary)} was optimised without -flive-patching: callers of "
             f"{', '.join(f.name for f in meta.replace[:5])} may have inlined or specialised them and keep "
             "the old code; `hotpatch build --diff` finds such callers and replaces them too")
    if optimised and not any("-flive-patching" in p or "-fno-ipa-ra" in p for p in optimised):
        _warn_clobbers(binary, image, meta, obj, warn)


def _warn_clobbers(binary: str, image: ElfImage, meta: patchfile.PatchMeta, obj: RelocatableObject, warn) -> None:
    """-fipa-ra (on at -O2): callers in the same file may keep values in caller-saved registers across a call
    to a function they know leaves them alone. A new version that writes more of them breaks those callers."""
    with open(binary, "rb") as f:
        data = f.read()
    arch = get_arch(obj.machine)
    for fn in meta.replace:
        off = image.vaddr_to_offset(fn.offset)
        sym = next((s for s in obj.defined_functions() if s.name == fn.name), None)
        if off is None or sym is None or not isinstance(sym.shndx, int):
            continue
        before = clobbers.written(obj.machine, data[off:off + fn.size])
        if before is clobbers.ALL:
            continue   # it calls out already: its callers expect every caller-saved register lost
        calls = any(arch.relocations.get(r.r_type) is not None and arch.relocations[r.r_type].is_call
                    for r in obj.relocations.get(sym.shndx, []) if sym.value <= r.r_offset < sym.value + sym.size)
        section = obj.sections[sym.shndx].data
        after = clobbers.ALL if calls else clobbers.written(obj.machine, section[sym.value:sym.value + sym.size])
        more = sorted((clobbers.caller_saved(obj.machine) if after is clobbers.ALL else after) - before)
        if more:
            warn(f"warning: {fn.name}: the new version writes {', '.join(more[:6])}"
                 f"{' (it calls out)' if after is clobbers.ALL else ''}, which the original left alone; callers "
                 "compiled with -fipa-ra (on at -O2 unless -flive-patching) may keep values there across the "
                 "call and break. Rebuild the program with -fno-ipa-ra or -flive-patching=inline-clone, or keep "
                 "the new version from using them")


def load_target(binary: str) -> tuple[ElfImage, SymbolTable, Arch]:
    """The binary a patch is built for: its ELF image, symbol table and architecture; refused without a
    build-id (a patch is tied to one build)."""
    if not os.path.isfile(binary):
        raise UsageError(f"binary {binary} does not exist")
    try:
        image = ElfImage.from_path(binary)
        table = load_symbol_table(binary)
    except (ELFFormatError, OSError) as e:
        raise InvalidPatch(f"{binary} is not a readable ELF binary: {e}") from e
    if not image.build_id:
        raise InvalidPatch(f"{binary} has no build-id, so a patch cannot be tied to it",
                           "link the binary with -Wl,--build-id")
    return image, table, arch_for_machine(image.ehdr.e_machine)


def build(sources: list[str], binary: str, output: str, cflags: str = "",
          picks: dict[str, str] | None = None, warn=None) -> patchfile.PatchMeta:
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    image, table, arch = load_target(binary)
    with tempfile.TemporaryDirectory(prefix="hotpatch-build-") as work:
        obj_bytes = compile_sources(sources, pick_compiler(arch), shlex.split(cflags), work)
    try:
        obj = parse_relocatable(obj_bytes)
    except ELFFormatError as e:
        raise InvalidPatch(f"the compiler produced an unusable object: {e}") from e
    if obj.machine != arch.name:
        raise InvalidPatch(f"the patch was compiled for {obj.machine} but the binary is {arch.name}",
                           "set CC to a compiler for the binary's architecture")
    meta = analyse(obj, binary, image, table, picks or {}, sources, warn)
    plan_layout(obj, arch, header_size=4096)  # refuses unsupported relocations now, not at apply
    data = patchfile.encode(meta, obj_bytes)
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, output)
    _warn_inlining(binary, image, table, meta, warn, obj)
    return meta
