"""apply: one transaction on a live process.

Work that needs no stopped thread happens first, while the process runs:
reading the patch, finding the module, checking the code, resolving symbols,
linking, mapping and filling the image (one thread lent for a few remote
system calls). Only the commit stops every thread: the activeness check, the
jumps, resume. Any failure before the commit point undoes what was done,
newest first, and detaches.
"""

import datetime
import hashlib
import os
import time
from dataclasses import dataclass, field

from hotpatch import __version__, patchfile
from hotpatch.arch import get_arch
from hotpatch.errors import PatchMismatch, SymbolNotFound, UndoFailed
from hotpatch.link.linker import LayoutPlan, plan_layout
from hotpatch.live import ehframe, hostkey, image, perfmap, records, sandbox, trampolines, transition
from hotpatch.live.transaction import Transaction
from hotpatch.live.unwinding import Stacks
from hotpatch.ops.settle import settle, view
from hotpatch.ops.trust import verify
from hotpatch.process.attach import Process, attach
from hotpatch.process.modules import LoadedModules, Module
from hotpatch.steps import Steps, check_interrupted


def apply(pid: int, patch_path: str, timeout: float = 10.0, dry_run: bool = False, trust: str | None = None) -> dict:
    return apply_loaded(pid, load(patch_path, trust), timeout, dry_run)


@dataclass(frozen=True)
class LoadedPatch:
    """A patch file read, its signature checked and its code parsed: the same bytes for every process
    it is applied to (apply --all-processes and the daemon load it once)."""
    path: str
    patch: patchfile.PatchFile
    signer: str | None
    _layouts: dict = field(default_factory=dict, compare=False, repr=False)

    def layout(self, arch, module_path: str, page_size: int) -> tuple[int, LayoutPlan]:
        """The record header's size and the image's layout: the same in every process of the binary
        (addresses come later, at link), so computed once."""
        key = (arch.name, module_path, page_size)
        if key not in self._layouts:
            header_size = records.header_size_for([fn.name for fn in self.patch.meta.replace],
                                                  os.path.basename(self.path), module_path, page_size)
            self._layouts[key] = header_size, plan_layout(self.patch.obj, arch, header_size, page_size)
        return self._layouts[key]


def load(patch_path: str, trust: str | None = None, required: bool = False) -> LoadedPatch:
    """Read, verify (a signature `required`, else when the trust file exists) and parse a patch file."""
    data = patchfile.read_bytes(patch_path)
    signer = verify(patch_path, data, trust, required)   # the bytes checked are the bytes applied
    patch = patchfile.decode(data, patch_path)
    patch.obj   # parse and check the code now: a bad patch never reaches the process
    return LoadedPatch(patch_path, patch, signer)


def apply_loaded(pid: int, loaded: LoadedPatch, timeout: float = 10.0, dry_run: bool = False,
                 key: bytes | None = None) -> dict:
    """Apply to process `pid`. `key`: the host key (read here if not given: a fleet run reads it once)."""
    steps = Steps("apply", pid)
    arch = get_arch(loaded.patch.meta.arch)
    steps.mark("parsed")
    proc = attach(pid, arch, abort_check=check_interrupted)
    tx = Transaction()
    try:
        report = _apply(proc, tx, loaded, timeout, dry_run, steps, key or hostkey.load(create=True))
        report["signed_by"] = loaded.signer
        return report
    except BaseException as e:
        tx.abort(proc, e)
        raise
    finally:
        proc.close()


def _apply(proc: Process, tx: Transaction, loaded_patch: LoadedPatch, timeout: float, dry_run: bool,
           steps: Steps, key: bytes) -> dict:
    patch, patch_path = loaded_patch.patch, loaded_patch.path
    meta, arch = patch.meta, proc.arch
    policy = sandbox.check_process(proc)
    seen = view(proc, key)
    repaired = [] if dry_run else settle(proc, timeout, seen)
    if repaired:
        seen = view(proc, key)
    maps, loaded, found = seen.maps, seen.loaded, seen.found
    module = find_module(proc.pid, loaded, meta)
    # Records that fail verification are not ours to build on: their bytes count as the code's.
    applied = [r for r in found if not r.retired and records.verify(r, arch, maps, loaded.modules) is None]
    for r in applied:
        if r.patch_sha256 == patch.sha256:
            raise PatchMismatch(f"this patch is already applied to process {proc.pid} as patch {r.id}",
                                "revert it first to apply it again")
    verify_code(proc, module, meta, applied)
    verify_ifuncs(proc, module, loaded, meta)
    steps.mark("verified")

    header_size, plan = loaded_patch.layout(arch, module.path, proc.page_size)
    resolved = resolve_symbols(proc, module, loaded, meta, plan.undefined)
    steps.mark("resolved")

    # Link and build the jumps for the intended address before anything is
    # mapped: an unresolved symbol, an out-of-range relocation or a function
    # too short for the jump is refused with the process untouched.
    addresses = image.candidates(proc, maps, module, plan.size, plan.low)
    intended = addresses[0] if addresses else image.ANYWHERE
    tls = tls_resolver(proc, module, loaded, meta)
    linked = plan.link(intended, resolved.get, tls)
    tramps = trampolines.plan(meta, module, linked, arch, proc.mem)
    guarded = trampolines.guarded_ranges(meta, module, applied)
    stacks = Stacks(proc, maps, loaded.modules, applied)
    if dry_run:
        attempts = transition.stop_when_safe(proc, guarded, timeout, steps, stacks, maps)
        return _report(proc, "dry-run", None, module, linked, tramps, attempts, steps, patch_path)

    record_id = max((r.id for r in found), default=0) + 1   # retired ones too
    proc.remote(maps)
    base = image.map_image(proc, plan, addresses, record_id, policy.name_vmas)
    registered: list[records.PatchRecord] = []

    def free_image() -> None:
        # Frames the unwinder knows must be deregistered before the memory
        # goes; if that cannot be done the image stays, retired.
        for r in registered:
            why = ehframe.deregistered(proc, loaded, r, timeout)
            if why is not None:
                records.mark_retired(r, proc.mem)
                raise UndoFailed(f"the image of patch {r.id} stays mapped, retired: its unwind information "
                                 f"could not be deregistered ({why})", "`hotpatch gc` frees it later")
        proc.syscall("munmap", base, plan.size)
    tx.on_undo("unmap the image", free_image)
    steps.mark("mapped")
    if base != intended:   # the hole was taken meanwhile: link for where it landed
        linked = plan.link(base, resolved.get, tls)
        tramps = trampolines.plan(meta, module, linked, arch, proc.mem)
    record = records.PatchRecord(
        id=record_id, patch=os.path.basename(patch_path), patch_sha256=patch.sha256,
        applied_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        hotpatch_version=__version__, build_id=meta.target_build_id, module=module.path,
        bias=module.bias, base=base, size=plan.size, code=list(linked.code_range),
        functions=[records.SwitchedFunction(t.name, t.entry, t.branch.site, t.new, t.saved.hex(),
                                            t.branch.code.hex(), linked.sizes.get(t.name, 0)) for t in tramps],
        eh_frame=list(linked.eh_frame) if linked.eh_frame else None, trap=linked.trap,
        frame_object=linked.frame_object, committing=True)   # journaled from the start: see ops/settle.py
    image.fill(proc, linked, record, header_size, key)
    steps.mark("filled")
    unwinder = ehframe.find_unwinder(proc, loaded) if linked.eh_frame and linked.frame_object else None
    if unwinder is not None:
        ehframe.register(proc, unwinder, record, time.monotonic() + timeout)
        registered.append(record)
        steps.mark("registered")

    attempts = transition.stop_when_safe(proc, guarded, timeout, steps, stacks, maps)
    trampolines.switch(tramps, proc.mem, tx, steps)
    tx.commit()   # the commit point: from here the patch stands, nothing below undoes it
    proc.detach_all()
    steps.mark("resumed", abortable=False)
    record.committing = False
    records.write_flags(record, proc.mem)
    report = _report(proc, "applied", record, module, linked, tramps, attempts, steps, patch_path)
    report["warnings"] = [w for w in [perfmap.update(proc.pid, found + [record])] if w]
    report["repaired"] = repaired
    return report


def find_module(pid: int, loaded: LoadedModules, meta: patchfile.PatchMeta) -> Module:
    """The loaded module with the build-id the patch was built for."""
    for m in loaded.modules:
        if m.image.build_id == meta.target_build_id:
            if m.image.ehdr.machine != meta.arch:
                raise PatchMismatch(f"module {m.path} is {m.image.ehdr.machine}, the patch is for {meta.arch}")
            return m
    exe = loaded.modules[0] if loaded.modules else None
    unreadable = (f"; unreadable: {', '.join(f'{p} ({why})' for p, why in loaded.unreadable.items())}"
                  if loaded.unreadable else "")
    name = os.path.basename(meta.target_path)
    if meta.target_library:   # perhaps not loaded yet, or another build of it is
        same = [m for m in loaded.modules if os.path.basename(m.path).split(".so")[0] == name.split(".so")[0]]
        remedy = (f"the process has {', '.join(shown_path(pid, m.path) for m in same)} (build-id "
                  f"{(same[0].image.build_id or '?')[:16]}…): build the patch against that file" if same else
                  "apply once the process has loaded it (dlopen), or patch a process that has")
    else:
        remedy = (f"build the patch against the binary the process runs "
                  f"({shown_path(pid, exe.path) if exe else 'unknown'}, "
                  f"build-id {(exe.image.build_id or '?')[:16] if exe else '?'}…)")
    raise PatchMismatch(
        f"process {pid} has not loaded the binary this patch was built for "
        f"({name}, build-id {meta.target_build_id[:16]}…){unreadable}", remedy)


def shown_path(pid: int, path: str) -> str:
    """A path as the process sees it, and where it is from here when the process has another mount
    namespace (a container): /proc/PID/root/..."""
    try:
        other = os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    except OSError:
        other = False
    return f"{path} (in its mount namespace; here /proc/{pid}/root{path})" if other else path


def verify_code(proc: Process, module: Module, meta: patchfile.PatchMeta,
                applied: list[records.PatchRecord]) -> None:
    """Each replaced function's bytes (as they were before earlier patches) hash as recorded at build."""
    for fn in meta.replace:
        entry = module.bias + fn.offset
        current = proc.mem.read(entry - fn.hop, fn.room + fn.hop)
        original = records.original_view(applied, entry - fn.hop, current)
        if hashlib.sha256(original).hexdigest() != fn.sha256:
            raise PatchMismatch(
                f"the code of {fn.name} at {entry:#x} differs from the binary the patch was built for "
                f"(expected {fn.head[:16]}…, found {original[:8].hex()}…)",
                "the process runs a different build, or something else modified it")


def verify_ifuncs(proc: Process, module: Module, loaded: LoadedModules, meta: patchfile.PatchMeta) -> None:
    """A replaced IFUNC: the implementation the patch replaces must be the one this process uses."""
    if not meta.ifuncs:
        return
    symbols = loaded.symbols(proc.pid, proc.mem, proc.arch.got_reloc_types)
    for fn in meta.replace:
        if fn.name in meta.ifuncs:
            used = symbols.bound_ifunc(fn.name, module)
            if used != module.bias + fn.offset:
                raise PatchMismatch(f"{fn.name} is an IFUNC: the patch replaces {meta.ifuncs[fn.name]}, but process "
                                    f"{proc.pid} uses the implementation at {used:#x}",
                                    "build the patch on the machine the process runs on")


def resolve_symbols(proc: Process, module: Module, loaded: LoadedModules, meta: patchfile.PatchMeta,
                    names: list[str]) -> dict[str, int | None]:
    """Each undefined name of the patch: the binary's own symbol recorded at build, else the loaded libraries'."""
    symbols = loaded.symbols(proc.pid, proc.mem, proc.arch.got_reloc_types)
    resolved: dict[str, int | None] = {}
    for name in names:
        own = meta.target_symbols.get(name)
        if own is not None and own.kind == patchfile.IFUNC_SLOT:
            resolved[name] = _ifunc_slot(proc, module, name, module.bias + own.offset)
        else:
            resolved[name] = module.bias + own.offset if own else symbols.resolve(name)
    return resolved


def tls_resolver(proc: Process, module: Module, loaded: LoadedModules, meta: patchfile.PatchMeta):
    """The pair (tls_index or descriptor) of each thread-local variable the patch uses: the binary's own
    (recorded at build) in the patched module, else the first module in scope that defines it."""
    symbols = loaded.symbols(proc.pid, proc.mem, proc.arch.got_reloc_types)
    cache: dict[str, tuple[int, int]] = {}

    def resolve(name: str) -> tuple[int, int]:
        if name not in cache:
            own = meta.target_symbols.get(name)
            if own is not None and own.kind == "tls":
                cache[name] = symbols.tls_pair(module, name, own.offset, proc.arch)
            else:
                cache[name] = symbols.resolve_tls(name, proc.arch)
        return cache[name]
    return resolve


def _ifunc_slot(proc: Process, module: Module, name: str, slot: int) -> int:
    """The implementation the binary's start code chose for IFUNC `name`, read from its slot; it must be
    code of that binary (else the slot is not filled yet, or not what the build saw)."""
    value = int.from_bytes(proc.mem.read(slot, 8), "little")
    if not any(m.executable and m.start <= value < m.end and m.path == module.path for m in proc.maps()):
        raise SymbolNotFound(f"{name} is an IFUNC of {os.path.basename(module.path)} and its slot at {slot:#x} "
                             f"holds {value:#x}, which is not its code",
                             "apply once the program has started (its IFUNCs are resolved at startup)")
    return value


def _report(proc: Process, status: str, record, module: Module, linked, tramps, attempts: int, steps: Steps,
            patch_path: str) -> dict:
    return {
        "status": status, "pid": proc.pid, "patch": os.path.basename(patch_path),
        "id": record.id if record else None, "module": module.path,
        "image": {"base": hex(linked.base), "size": linked.size},
        "functions": [{"name": t.name, "entry": hex(t.entry), "new": hex(t.new), "jump": t.branch.form}
                      for t in tramps],
        "checks": attempts, "signals_passed": proc.signals_passed, "timings_ms": steps.marks,
    }


