"""apply, revert and list: each a transaction on a live process.

Work that needs no stopped thread happens first, while the target runs:
reading the patch, finding the module, checking the code, resolving symbols,
mapping and filling the image (one thread lent for a few remote syscalls).
Only the commit stops every thread: the activeness check, the jumps, resume.
Any failure undoes what was done, newest first, and detaches.
"""

import datetime
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Callable

from hotpatch import __version__, patchfile, state
from hotpatch.arch import get_arch
from hotpatch.arch.base import Arch, Branch
from hotpatch.errors import (HotpatchError, PatchMismatch, TargetBusy, TargetGone,
                             TraceError, UsageError)
from hotpatch.link.linker import PROT_EXEC, PROT_READ, LayoutPlan, LinkedImage, plan_layout
from hotpatch.safety.activeness import GuardedRange, RangeSet, find_busy
from hotpatch.session import Session, check_pid, process_arch
from hotpatch.steps import Steps
from hotpatch.target.maps import MapIndex, Mapping, read_maps
from hotpatch.target.memory import Memory
from hotpatch.target.placement import candidate_addresses
from hotpatch.target.process import Module, ProcessSymbols, loaded_modules
from hotpatch.target.threads import running_threads, thread_name
from hotpatch.target.remote import (EEXIST, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE,
                                    PR_SET_VMA, PR_SET_VMA_ANON_NAME, RemoteSyscallError)


class Transaction:
    """Undo actions, run newest first on failure; each runs even if another fails."""

    def __init__(self):
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def on_undo(self, what: str, action: Callable[[], None]) -> None:
        self._undo.append((what, action))

    def rollback(self) -> list[str]:
        failures = []
        while self._undo:
            what, action = self._undo.pop()
            try:
                action()
            except BaseException as e:  # keep undoing: one failure must not strand the rest
                failures.append(f"{what}: {e}")
        return failures

    def commit(self) -> None:
        self._undo.clear()


def _find_records(maps: list[Mapping], mem: Memory) -> list[state.PatchRecord]:
    records = []
    for m in maps:
        if not (m.anonymous and m.perms.startswith("r-") and m.offset == 0):
            continue
        if m.path and not m.path.startswith("[anon:hotpatch:"):
            continue
        head = mem.read_upto(m.start, 64)
        if head[:16] != state.MAGIC:
            continue
        length = int.from_bytes(head[48:52], "little")
        record = state.PatchRecord.from_header(mem.read_upto(m.start, state.JSON_OFFSET + length))
        if record is not None and record.base == m.start:
            records.append(record)
    return sorted(records, key=lambda r: r.id)


def _is_active(record: state.PatchRecord, mem: Memory) -> bool:
    return all(mem.read_upto(f.site, len(f.written) // 2).hex() == f.written for f in record.functions)


def _guard_loop(session: Session, ranges: RangeSet, timeout: float, on_safe: Callable[[], None],
                timings: Steps) -> int:
    """Stop every thread until none is busy in `ranges`, then run on_safe with all stopped.

    Between attempts the target runs, so a busy thread never freezes the
    others. Returns the number of attempts.
    """
    deadline = time.monotonic() + timeout
    delay, attempts = 0.001, 0
    maps = MapIndex(session.maps())
    session.prepare_snapshot()
    while True:
        attempts += 1
        session.group.running_hint = running_threads(session.pid, session.group.tracees)
        timings.mark("stopping")
        session.group.stop_all()
        timings.mark("stopped")
        busy = find_busy(session.snapshot_threads(maps), ranges)
        timings.mark("checked")
        if busy is None:
            on_safe()
            return attempts
        if time.monotonic() + delay >= deadline:
            raise TargetBusy(
                f"{busy.describe(thread_name(session.pid, busy.tid))}; still busy after {timeout:g} s ({attempts} checks)",
                "retry when the process is idle or raise --timeout; a function that never returns "
                "(a thread's main loop) can never be replaced")
        session.group.resume_all()
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# -- apply -------------------------------------------------------------------

def _find_module(session: Session, maps: list[Mapping], meta: patchfile.PatchMeta) -> tuple[Module, list[Module]]:
    modules = loaded_modules(session.pid, maps, session.mem)
    for m in modules:
        if m.image.build_id == meta.target_build_id:
            if m.image.ehdr.machine != meta.arch:
                raise PatchMismatch(f"module {m.path} is {m.image.ehdr.machine}, the patch is for {meta.arch}")
            return m, modules
    exe = next((m for m in modules), None)
    raise PatchMismatch(
        f"process {session.pid} has not loaded the binary this patch was built for "
        f"({os.path.basename(meta.target_path)}, build-id {meta.target_build_id[:16]}…)",
        f"build the patch against the binary the process runs ({exe.path if exe else 'unknown'}, "
        f"build-id {(exe.image.build_id or '?')[:16] if exe else '?'}…)")


def _verify_code(mem: Memory, module: Module, meta: patchfile.PatchMeta,
                 records: list[state.PatchRecord]) -> None:
    for fn in meta.replace:
        entry = module.bias + fn.offset
        current = mem.read(entry, fn.room)
        original = state.original_view(records, entry, current)
        if hashlib.sha256(original).hexdigest() != fn.sha256:
            raise PatchMismatch(
                f"the code of {fn.name} at {entry:#x} differs from the binary the patch was built for "
                f"(expected {fn.head[:16]}…, found {original[:8].hex()}…)",
                "the process runs a different build, or something else modified it")


def _map_image(session: Session, plan: LayoutPlan, candidates: list[int], name: bytes) -> int:
    """mmap the image r-x, then tighten parts to r-- and rw-: never writable and executable at once.

    MAP_FIXED_NOREPLACE never clobbers a mapping the running target created
    meanwhile; on EEXIST the next hole is tried.
    """
    flags = MAP_PRIVATE | MAP_ANONYMOUS
    base = None
    for addr in candidates[:16]:
        try:
            got = session.syscall("mmap", addr, plan.size, PROT_READ | PROT_EXEC,
                                  flags | MAP_FIXED_NOREPLACE, (1 << 64) - 1, 0)
        except RemoteSyscallError as e:
            if e.errno == EEXIST:
                continue
            raise
        if got == addr:
            base = got
            break
        session.syscall("munmap", got, plan.size)   # pre-4.17 kernels treat the flag as a hint
    if base is None:
        base = session.syscall("mmap", 0, plan.size, PROT_READ | PROT_EXEC, flags, (1 << 64) - 1, 0)
    try:
        for seg in plan.segments:
            if seg.prot != PROT_READ | PROT_EXEC:
                session.syscall("mprotect", base + seg.offset, seg.size, seg.prot)
        session.mem.write(base + state.NAME_OFFSET, name + b"\0")
        if session.name_vmas:
            try:
                session.syscall("prctl", PR_SET_VMA, PR_SET_VMA_ANON_NAME, base, plan.size,
                                base + state.NAME_OFFSET)
            except RemoteSyscallError:
                pass   # kernel without CONFIG_ANON_VMA_NAME: list finds the image by its magic
    except BaseException:
        session.syscall("munmap", base, plan.size)
        raise
    return base


@dataclass
class Trampoline:
    name: str
    entry: int
    branch: Branch
    saved: bytes
    new: int


def apply(pid: int, patch_path: str, timeout: float = 10.0, dry_run: bool = False) -> dict:
    timings = Steps("apply")
    patch = patchfile.read(patch_path)
    patch.obj   # parse and check the code now: a bad patch never reaches the process
    arch = get_arch(patch.meta.arch)
    check_pid(pid)
    timings.mark("parsed")
    session = Session(pid, arch)
    tx = Transaction()
    try:
        return _apply(session, tx, patch, arch, patch_path, timeout, dry_run, timings)
    except BaseException as e:
        _undo(session, tx, e)
        raise
    finally:
        session.close()


def _undo(session: Session, tx: Transaction, error: BaseException) -> None:
    if not session.alive():
        tx.commit()
        raise TargetGone(f"process {session.pid} exited during the operation; nothing left to undo") from error
    with session.waiter.uninterruptible():
        failures = tx.rollback()
    if failures:
        raise TraceError(f"{_message(error)}; and undoing failed: {'; '.join(failures)}",
                         "the process may be damaged: check it") from error


def _message(e: BaseException) -> str:
    return e.line() if isinstance(e, HotpatchError) else f"{type(e).__name__}: {e}"


def _apply(session: Session, tx: Transaction, patch: patchfile.PatchFile, arch: Arch, patch_path: str,
           timeout: float, dry_run: bool, timings: Steps) -> dict:
    meta, obj, mem = patch.meta, patch.obj, session.mem
    maps = session.maps()
    module, modules = _find_module(session, maps, meta)
    records = _find_records(maps, mem)
    for r in records:
        if r.patch_sha256 == patch.sha256:
            raise PatchMismatch(f"this patch is already applied to process {session.pid} as patch {r.id}",
                                "revert it first to apply it again")
    _verify_code(mem, module, meta, records)
    timings.mark("verified")

    names = [fn.name for fn in meta.replace]
    header = state.header_size_for(names, os.path.basename(patch_path), module.path, session.page_size)
    plan = plan_layout(obj, arch, header, session.page_size)
    symbols = ProcessSymbols(session.pid, modules, mem, arch.got_reloc_types)
    resolved: dict[str, int | None] = {}
    for name in plan.undefined:
        target_sym = meta.target_symbols.get(name)
        resolved[name] = module.bias + target_sym.offset if target_sym else symbols.resolve(name)
    timings.mark("resolved")

    candidates = []
    if not os.environ.get("HOTPATCH_FAR_IMAGE"):   # test hook: exercise the far jump forms
        for reach in (arch.branch_reach, arch.fallback_reach):
            if reach:
                candidates += [a for a in candidate_addresses(maps, module.start, module.end, plan.size,
                                                              session.page_size, reach) if a not in candidates]
    record_id = max((r.id for r in records), default=0) + 1

    def trampolines_for(image: LinkedImage) -> list[Trampoline]:
        out = []
        for fn in meta.replace:
            entry = module.bias + fn.offset
            new = image.symbols[fn.name]
            jump = arch.branch(entry + fn.pad, new, fn.room - fn.pad)
            # The landing pad is written too: kept as is (endbr64, bti c) or
            # turned into bti c (paciasp), so one range covers both.
            pad = arch.entry_rewrite(bytes.fromhex(fn.head))[:fn.pad]
            branch = Branch(entry, pad + jump.code, jump.form)
            out.append(Trampoline(fn.name, entry, branch, mem.read(entry, len(branch.code)), new))
        return out

    guarded = RangeSet([GuardedRange(module.bias + fn.offset, module.bias + fn.offset + fn.room, fn.name)
                        for fn in meta.replace] +
                       [GuardedRange(module.bias + off, module.bias + off + size, fn.name + ".cold")
                        for fn in meta.replace for off, size in fn.cold])

    if dry_run:
        image = plan.link(candidates[0] if candidates else 0x7F00_0000_0000, resolved.get)
        tramps = trampolines_for(image)
        attempts = _guard_loop(session, guarded, timeout, lambda: None, timings)
        return _report(session, "dry-run", None, meta, module, image, tramps, attempts, timings,
                       patch_path)

    # Link once at the intended address before mapping anything: an unresolved
    # symbol or an out-of-range relocation is refused with the target untouched.
    trampolines_for(plan.link(candidates[0] if candidates else 0x7F00_0000_0000, resolved.get))
    base = _map_image(session, plan, candidates, f"hotpatch:{record_id}".encode())
    tx.on_undo("unmap the image", lambda: session.syscall("munmap", base, plan.size))
    timings.mark("mapped")
    image = plan.link(base, resolved.get)
    tramps = trampolines_for(image)
    record = state.PatchRecord(
        id=record_id, patch=os.path.basename(patch_path), patch_sha256=patch.sha256,
        applied_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        hotpatch_version=__version__, build_id=meta.target_build_id, module=module.path,
        bias=module.bias, base=base, size=plan.size, code=list(image.code_range),
        functions=[state.SwitchedFunction(t.name, t.entry, t.branch.site, t.new, t.saved.hex(),
                                          t.branch.code.hex()) for t in tramps])
    image.data[:header] = record.header_bytes(header)
    mem.write(base, bytes(image.data))
    timings.mark("filled")

    def switch() -> None:
        for i, t in enumerate(tramps):
            tx.on_undo(f"restore {t.name}", lambda t=t: mem.write(t.branch.site, t.saved))
            mem.write(t.branch.site, t.branch.code)
            if i == 0:
                timings.mark("first-switched")
        timings.mark("switched")
        tx.commit()   # from here the patch stands: nothing below undoes it

    attempts = _guard_loop(session, guarded, timeout, switch, timings)
    session.group.detach_all()
    timings.mark("resumed", abortable=False)
    return _report(session, "applied", record, meta, module, image, tramps, attempts, timings, patch_path)


def _report(session, status, record, meta, module, image, tramps, attempts, timings, patch_path) -> dict:
    return {
        "status": status, "pid": session.pid, "patch": os.path.basename(patch_path),
        "id": record.id if record else None, "module": module.path,
        "image": {"base": hex(image.base), "size": image.size},
        "functions": [{"name": t.name, "entry": hex(t.entry), "new": hex(t.new), "jump": t.branch.form}
                      for t in tramps],
        "checks": attempts, "signals_passed": session.group.signals_passed, "timings_ms": timings.marks,
    }


# -- list --------------------------------------------------------------------

def list_patches(pid: int) -> list[dict]:
    check_pid(pid)
    mem = Memory(pid, writable=False)
    try:
        records = _find_records(read_maps(pid), mem)
        return [{"id": r.id, "patch": r.patch, "applied_at": r.applied_at, "module": r.module,
                 "status": "active" if _is_active(r, mem) else "inactive",
                 "image": {"base": hex(r.base), "size": r.size},
                 "functions": [{"name": f.name, "entry": hex(f.entry), "new": hex(f.new)}
                               for f in r.functions]} for r in records]
    finally:
        mem.close()


# -- revert ------------------------------------------------------------------

def revert(pid: int, patch_id: int | None = None, revert_all: bool = False, timeout: float = 10.0) -> dict:
    timings = Steps("revert")
    check_pid(pid)
    arch = process_arch(pid)
    session = Session(pid, arch)
    try:
        return _revert(session, patch_id, revert_all, timeout, timings)
    finally:
        session.close()


def _revert(session: Session, patch_id: int | None, revert_all: bool, timeout: float,
            timings: Steps) -> dict:
    mem = session.mem
    records = _find_records(session.maps(), mem)
    if not records:
        raise UsageError(f"no patch is applied to process {session.pid}")
    if revert_all:
        chosen = list(records)
    elif patch_id is None:
        chosen = [records[-1]]
    else:
        chosen = [r for r in records if r.id == patch_id]
        if not chosen:
            raise UsageError(f"process {session.pid} has no patch {patch_id}",
                             f"applied: {', '.join(str(r.id) for r in records)}")
    chosen_ids = {r.id for r in chosen}
    for r in chosen:
        sites = {f.site for f in r.functions}
        for later in records:
            if later.id > r.id and later.id not in chosen_ids and sites & {f.site for f in later.functions}:
                raise UsageError(f"patch {r.id} cannot be reverted while patch {later.id} replaces the "
                                 "same function again", f"revert patch {later.id} first")
    chosen.sort(key=lambda r: r.id, reverse=True)
    guarded = RangeSet([GuardedRange(r.code[0], r.code[1], f"the code of patch {r.id}") for r in chosen])

    def restore() -> None:
        # Newest first, each site read once: a record whose sites all hold its
        # jumps is restored; one whose sites all hold the saved bytes never got
        # its jumps (an interrupted apply) and is only unmapped; anything else
        # was changed by someone else and is left alone (what was restored is
        # put back).
        written = []
        try:
            for r in chosen:
                current = [mem.read(f.site, len(f.written) // 2).hex() for f in r.functions]
                if all(c == f.saved for c, f in zip(current, r.functions)):
                    continue
                for c, f in zip(current, r.functions):
                    if c != f.written:
                        raise PatchMismatch(f"{f.name} at {f.entry:#x} was modified after patch {r.id} was "
                                            "applied; not reverting", "inspect the process")
                for f in r.functions:
                    mem.write(f.site, bytes.fromhex(f.saved))
                    written.append(f)
                    if len(written) == 1:
                        timings.mark("first-restored")
        except BaseException:
            for f in reversed(written):
                mem.write(f.site, bytes.fromhex(f.written))
            raise
        timings.mark("switched", abortable=False)   # reverted: the rest only frees memory

    attempts = _guard_loop(session, guarded, timeout, restore, timings)
    # No thread runs or returns into the images and nothing jumps there now:
    # the others go while one thread unmaps them.
    session.group.detach_all(keep=session.syscall_thread())
    timings.mark("resumed", abortable=False)
    unfreed = []
    for r in chosen:
        try:
            timings.mark("unmapping")
            session.syscall("munmap", r.base, r.size)
        except HotpatchError as e:
            if not session.alive():
                raise
            # The code is restored and the image unreachable: the revert
            # stands; the memory stays until a later revert frees it.
            unfreed.append({"id": r.id, "base": hex(r.base), "size": r.size, "reason": e.message})
    timings.mark("unmapped", abortable=False)
    session.group.detach_all()
    return {"status": "reverted", "pid": session.pid, "reverted": [r.id for r in chosen],
            "patches": [r.patch for r in chosen], "checks": attempts, "timings_ms": timings.marks,
            "unfreed": unfreed}
