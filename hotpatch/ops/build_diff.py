"""`hotpatch build --diff`: from a fix (unified diffs) and the source of a running binary, a patch file.

The source tree is copied (the user's is never touched) and built once with
the project's own build command, the compilers on PATH and in CC/CXX wrapped.
The diffs are then applied and the build run again, so only what they touch
recompiles (the build system's own dependencies decide), this time with a
section per function, unwind tables and debug information added and each
compile's object kept. Then the diffs are taken back out and the build run a
third time: the same files recompile as they were, generated sources
regenerated from their own inputs. The two objects of each file are compared
(diff/compare.py); what changed is extracted into one object
(diff/extract.py) and goes through the same checks and encoding as a
hand-written patch (ops/build.py).
"""

import difflib
import filecmp
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from hotpatch import patchfile
from hotpatch.diff.compare import Unit, compare, normal_name
from hotpatch.diff.dwarf import Debug, read_debug
from hotpatch.diff.extract import extract
from hotpatch.diff.unified import touched_lines
from hotpatch.elf.relocatable import RelocatableObject, parse_relocatable
from hotpatch.elf.symbols import SymbolTable
from hotpatch.errors import ELFFormatError, InvalidPatch, PatchMismatch, UsageError
from hotpatch.link.linker import plan_layout
from hotpatch.ops.build import FILE_LOCAL, analyse, load_target, pick_compiler

_CLONE = re.compile(r"\.(constprop|isra|part|cold|lto_priv)(\.\d+)?")
# A section per function, and nothing else that changes the code: -g changes no generated code (gcc's
# rule) and gives the DWARF that says why a function is in and whether a struct changed layout;
# -fdata-sections would (AArch64's section anchors), so variables are told apart by their ranges.
SECTION_FLAGS = ["-ffunction-sections", "-fasynchronous-unwind-tables", "-g"]
SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cxx", ".C", ".c++")
WRAPPER = """#!/bin/sh
# hotpatch build --diff: the compiler. With $HOTPATCH_CC_FLAGS (a file, one option per line) those options
# are added; with $HOTPATCH_CC_LOG each compile is logged there with a copy of its object, taken before the
# build can rename or remove it. The original build has neither: it runs as the project's own.
compile=
case " $* " in *" -c "*) compile=1 ;; esac
if [ -n "$HOTPATCH_CC_FLAGS" ]; then
  while IFS= read -r flag; do set -- "$@" "$flag"; done < "$HOTPATCH_CC_FLAGS"
fi
if [ -z "$compile" ] || [ -z "$HOTPATCH_CC_LOG" ]; then
  exec %(real)s "$@"
fi
%(real)s "$@" || exit
out= prev=
for a; do
  [ "$prev" = "-o" ] && out=$a
  case $a in -o?*) out=${a#-o} ;; esac
  prev=$a
done
record="$HOTPATCH_CC_LOG/cc.$$"
[ -n "$out" ] && cp "$out" "$record.o"
printf '%%s\\0' "$PWD" "$@" > "$record"
"""


@dataclass
class Compile:
    cwd: str
    argv: list[str]        # the build's own arguments, then ours
    source: str
    output: str            # where the build put the object
    object: str            # the object as the compiler made it (a copy in the log, or the output itself)


def build_diff(change: "DiffChange | TreeChange", source: str, binary: str, output: str,
               build_cmd: str | None = None, keep_tree: str | None = None, cflags: str = "",
               warn=None) -> patchfile.PatchMeta:
    """Build the patch that `change` (diffs, or an old and a new tree) makes to `source`, for `binary`."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if not os.path.isdir(source):
        raise UsageError(f"source directory {source} does not exist")
    image, table, arch = load_target(binary)
    flags = SECTION_FLAGS + shlex.split(cflags)
    if keep_tree:
        if os.path.exists(keep_tree):
            raise UsageError(f"--keep-tree {keep_tree} exists already")
        os.makedirs(keep_tree)
        return _build(change, source, binary, output, build_cmd, flags, os.path.abspath(keep_tree), image,
                      table, arch, warn)
    with tempfile.TemporaryDirectory(prefix="hotpatch-diff-") as work:
        return _build(change, source, binary, output, build_cmd, flags, work, image, table, arch, warn)


def _build(change, source, binary, output, build_cmd, flags, work, image, table, arch, warn):
    tree = os.path.join(work, "tree")
    shutil.copytree(source, tree, symlinks=True)
    env = _wrapped_env(work, pick_compiler(arch))
    flags_file = os.path.join(work, "cc-flags")
    with open(flags_file, "w") as f:
        f.write("".join(flag + "\n" for flag in flags))
    command = build_cmd or _recognise(tree)
    logs = os.path.join(work, "compiles")
    flagged = {**env, "HOTPATCH_CC_FLAGS": flags_file}
    _run_build(command, tree, env, None, "the original build")
    change.apply(tree)
    compiles = _pick(_run_build(command, tree, flagged, os.path.join(logs, "patched"), "the patched build"),
                     binary)
    if not compiles:
        raise InvalidPatch("the diff made the build recompile no C or C++ file",
                           "check that the diff changes the sources the binary is built from")
    change.revert(tree)
    third = _start_build(command, tree, flagged, os.path.join(logs, "original"))
    try:   # read the patched objects while the originals build
        patched = [_read_object(c.object, c.source) for c in compiles]
        patched_debug = [_read_debug(c.object) for c in compiles]
    except BaseException:
        third.kill()
        third.wait()
        raise
    rebuilt = {os.path.realpath(c.output): c for c in _finish_build(third, command, "the build without the diff")}
    missing = [c.source for c in compiles if os.path.realpath(c.output) not in rebuilt]
    if missing:
        raise InvalidPatch(f"with the diff taken back, the build did not recompile {', '.join(missing[:3])}: "
                           "its dependencies do not cover what the diff changes", "give a --build that does")
    before = [rebuilt[os.path.realpath(c.output)] for c in compiles]
    originals = [_read_object(c.object, c.source) for c in before]
    original_debug = [_read_debug(c.object) for c in before]

    touched = change.touched()
    objects, refusals, origin, new_names = [], [], {}, set()
    for c, before, after, old_debug, new_debug in zip(compiles, originals, patched, original_debug, patched_debug):
        rel = os.path.relpath(os.path.join(c.cwd, c.source), tree)
        refusals += _layout_changes(old_debug, new_debug, rel)
        _check_same_build(before, binary, table, rel)
        old, new = Unit.of(before), Unit.of(after)
        changes = compare(old, new, rel)
        refusals += changes.refusals
        gone_called = _gone_still_called(old, changes)
        refusals += [f"{rel}: {name} is gone from the patched build (inlined or removed) but unchanged code "
                     "still calls it" for name in gone_called]
        if not (changes.changed or changes.new or changes.new_data):
            continue
        part = extract(old, new, changes, rel)
        for name in part.replaced:
            origin[name] = {"file": rel, "why": _why(name, new_debug, touched)}
        for name in part.new:
            origin[name] = {"file": rel, "why": "new"}
            new_names.add(name)
        path = os.path.join(work, f"part-{len(objects)}.o")
        with open(path, "wb") as f:
            f.write(part.obj)
        objects.append(path)
    if refusals:
        raise InvalidPatch("cannot be patched live: " + "; ".join(refusals))
    if not objects:
        raise InvalidPatch("the diff changes no function of the compiled code (only comments or "
                           "unused code?)")
    obj_bytes = _combine(objects, work, pick_compiler(arch))
    try:
        obj = parse_relocatable(obj_bytes)
    except ELFFormatError as e:
        raise InvalidPatch(f"the extracted patch object is unusable: {e}") from e
    meta = analyse(obj, binary, image, table, {}, [c.source for c in compiles], warn, only_new=new_names,
                   from_diff=True)
    replaced = {f.name for f in meta.replace}
    for name, o in origin.items():
        if o["why"] != "new" and name not in replaced:   # a clone the running binary does not have
            clones = [c.name for c in table.clones_of(_CLONE.sub("", FILE_LOCAL.sub(r"\1", name)))]
            raise InvalidPatch(f"{o['file']}: {name} changed, but {os.path.basename(binary)} has no {name}"
                               + (f" (it has {', '.join(clones)})" if clones else ""),
                               "the binary was built differently from this source: give its exact build "
                               "command with --build")
    _check_folded(meta, table, binary, origin)
    seen: set[int] = set()   # aliases of one function (C1/C2 constructors): one jump at their entry
    meta.replace = [f for f in meta.replace if not (f.offset in seen or seen.add(f.offset))]
    meta.sources = [os.path.relpath(os.path.join(c.cwd, c.source), tree) for c in compiles]
    meta.origin = origin
    meta.diffs = change.records()
    plan_layout(obj, arch, header_size=4096)
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(patchfile.encode(meta, obj_bytes))
    os.replace(tmp, output)
    return meta


def _wrapped_env(work: str, cc: str) -> dict:
    """PATH with gcc, cc, g++, c++ (and CC, CXX) that wrap the real compilers ($CC's words kept: a launcher
    such as ccache, options such as -m32; each program word resolved, so none finds the wrapper again)."""
    shims = os.path.join(work, "bin")
    os.makedirs(shims)
    cxx = os.environ.get("CXX", "g++")
    for name, real in (("gcc", cc), ("cc", cc), ("g++", cxx), ("c++", cxx)):
        words = shlex.split(real)
        resolved = [w if w.startswith("-") else shutil.which(w) for w in words]
        if not words or None in resolved:
            continue
        path = os.path.join(shims, name)
        with open(path, "w") as f:
            f.write(WRAPPER % {"real": shlex.join(resolved)})   # type: ignore[arg-type]
        os.chmod(path, 0o755)
    env = dict(os.environ)
    env["PATH"] = shims + os.pathsep + env.get("PATH", "")
    env["CC"], env["CXX"] = os.path.join(shims, "gcc"), os.path.join(shims, "g++")
    return env


def _recognise(tree: str) -> str:
    jobs = os.cpu_count() or 1
    if any(os.path.isfile(os.path.join(tree, m)) for m in ("GNUmakefile", "makefile", "Makefile")):
        return f"make -j{jobs} CC=\"$CC\" CXX=\"$CXX\""
    if os.path.isfile(os.path.join(tree, "configure")):
        return f"./configure && make -j{jobs}"
    if os.path.isfile(os.path.join(tree, "CMakeLists.txt")):
        return f"cmake -S . -B _build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build _build -j{jobs}"
    if os.path.isfile(os.path.join(tree, "meson.build")):
        return f"(test -d _build || meson setup _build --buildtype=debugoptimized) && ninja -C _build -j{jobs}"
    raise UsageError(f"no build system recognised in {tree} (Makefile, configure, CMakeLists.txt, meson.build)",
                     "give the project's build command with --build")


def _run_build(command: str, tree: str, env: dict, log: str | None, what: str) -> list[Compile]:
    """Run the project's build; with `log`, the compiles it made (the wrapper's records)."""
    return _finish_build(_start_build(command, tree, env, log), command, what)


def _start_build(command: str, tree: str, env: dict, log: str | None) -> subprocess.Popen:
    if log is not None:
        os.makedirs(log)
        env = {**env, "HOTPATCH_CC_LOG": log}
    proc = subprocess.Popen(command, shell=True, cwd=tree, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc.log = log   # type: ignore[attr-defined]
    return proc


def _finish_build(proc: subprocess.Popen, command: str, what: str) -> list[Compile]:
    output = proc.communicate()[0].decode(errors="replace")
    if proc.returncode != 0:
        sys.stderr.write(output[-8000:])
        raise InvalidPatch(f"{what} failed (`{command}` exit {proc.returncode}); its output is above")
    log = proc.log   # type: ignore[attr-defined]
    if log is None:
        return []
    # A compile whose source is gone was a probe (configure's conftest.c), not the build's; an object
    # compiled twice counts once, as last made.
    made: dict[str, Compile] = {}
    records = [n for n in os.listdir(log) if not n.endswith(".o")]
    for n in sorted(records, key=lambda n: os.stat(os.path.join(log, n)).st_mtime_ns):
        c = _parse_record(os.path.join(log, n))
        if c is not None and os.path.isfile(c.object) and os.path.isfile(os.path.join(c.cwd, c.source)):
            made[os.path.realpath(c.output)] = c
    return list(made.values())


def _parse_record(path: str) -> Compile | None:
    with open(path, "rb") as f:
        fields = f.read().decode(errors="surrogateescape").split("\0")[:-1]
    if len(fields) < 2:
        return None
    cwd, argv = fields[0], fields[1:]
    sources = [a for a in argv if a.endswith(SOURCE_SUFFIXES) and not a.startswith("-")]
    if not sources:
        return None   # assembly, or a compile of nothing we compare
    if len(sources) > 1:
        raise InvalidPatch(f"the build compiles several files in one command ({', '.join(sources[:3])}): "
                           "their objects cannot be told apart", "build them one per command")
    out = None
    for i, a in enumerate(argv):
        if a == "-o" and i + 1 < len(argv):
            out = argv[i + 1]
        elif a.startswith("-o") and len(a) > 2:
            out = a[2:]
    if out is None:
        out = os.path.splitext(os.path.basename(sources[0]))[0] + ".o"
    output = os.path.join(cwd, out)
    copy = path + ".o"
    return Compile(cwd, argv, sources[0], output, copy if os.path.isfile(copy) else output)


def _pick(compiles: list[Compile], binary: str) -> list[Compile]:
    """C and C++ compiles, one per source file: a file built twice (static and shared objects) counts as
    built the way the target was (position-independent for a shared library)."""
    shared = ".so" in os.path.basename(binary)
    by_source: dict[str, list[Compile]] = {}
    for c in compiles:
        if c.source.endswith(SOURCE_SUFFIXES):
            by_source.setdefault(os.path.realpath(os.path.join(c.cwd, c.source)), []).append(c)
    out = []
    for group in by_source.values():
        pic = [c for c in group if any(a in ("-fPIC", "-fpic", "-DPIC") for a in c.argv)]
        plain = [c for c in group if c not in pic]
        out.append(((pic if shared else plain) or group)[-1])
    return out


class DiffChange:
    """The fix as unified diffs, applied with `patch -pN` (which dates what it writes now: make sees it)."""

    def __init__(self, diffs: list[str], strip: int = 1):
        for d in diffs:
            if not os.path.isfile(d):
                raise UsageError(f"diff {d} does not exist")
        self.diffs, self.strip = [os.path.abspath(d) for d in diffs], strip
        self.texts = [open(d, errors="surrogateescape").read() for d in self.diffs]

    def apply(self, tree: str) -> None:
        for d in self.diffs:
            self._patch(tree, d, reverse=False)

    def revert(self, tree: str) -> None:
        for d in reversed(self.diffs):
            self._patch(tree, d, reverse=True)

    def touched(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for text in self.texts:
            for path, lines in touched_lines(text, self.strip).items():
                out.setdefault(os.path.basename(path), set()).update(lines)
        return out

    def records(self) -> list[dict[str, str]]:
        return [_record(os.path.basename(d), t) for d, t in zip(self.diffs, self.texts)]

    def _patch(self, tree: str, diff: str, reverse: bool) -> None:
        argv = ["patch", f"-p{self.strip}", "--batch", "--forward", "--no-backup-if-mismatch", "-s", "-i", diff]
        if reverse:
            argv.insert(1, "-R")
        try:
            proc = subprocess.run(argv, cwd=tree, capture_output=True, text=True)
        except FileNotFoundError as e:
            raise UsageError("the `patch` program is not installed", "apt-get install patch") from e
        if proc.returncode != 0:
            first = (proc.stdout + proc.stderr).strip().splitlines()
            raise InvalidPatch(f"diff {os.path.basename(diff)} does not apply to the source"
                               + (f": {first[0]}" if first else ""), "check --source and --strip")


class TreeChange:
    """The fix as two trees (--orig OLDDIR --patched NEWDIR): each file of NEWDIR that differs from OLDDIR's
    is written over it, dated now (new files added, files NEWDIR lacks removed), and put back to revert.
    Version control directories are left out. The recorded diff is generated from the text files."""

    SKIP = {".git", ".hg", ".svn"}

    def __init__(self, old: str, new: str):
        for d in (old, new):
            if not os.path.isdir(d):
                raise UsageError(f"source directory {d} does not exist")
        self.old, self.new = old, new
        before, after = self._files(old), self._files(new)
        self.changed = sorted(p for p in before & after if not filecmp.cmp(os.path.join(old, p),
                                                                           os.path.join(new, p), shallow=False))
        self.added, self.removed = sorted(after - before), sorted(before - after)
        self.text = self._unified()

    def _files(self, root: str) -> set[str]:
        out = set()
        for path, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in self.SKIP]
            out.update(os.path.relpath(os.path.join(path, f), root) for f in files)
        return out

    def _unified(self) -> str:
        out = []
        for p in self.changed + self.added + self.removed:
            a = _text_lines(os.path.join(self.old, p)) if p not in self.added else []
            b = _text_lines(os.path.join(self.new, p)) if p not in self.removed else []
            if a is not None and b is not None:
                out += difflib.unified_diff(a, b, f"a/{p}", f"b/{p}")
        return "".join(out)

    def apply(self, tree: str) -> None:
        for p in self.changed + self.added:
            _install(os.path.join(self.new, p), os.path.join(tree, p))
        for p in self.removed:
            os.remove(os.path.join(tree, p))

    def revert(self, tree: str) -> None:
        for p in self.changed + self.removed:
            _install(os.path.join(self.old, p), os.path.join(tree, p))
        for p in self.added:
            os.remove(os.path.join(tree, p))

    def touched(self) -> dict[str, set[int]]:
        return {os.path.basename(p): lines for p, lines in touched_lines(self.text, 1).items()}

    def records(self) -> list[dict[str, str]]:
        return [_record(f"{os.path.basename(os.path.abspath(self.old))} -> "
                        f"{os.path.basename(os.path.abspath(self.new))}", self.text)]


def _text_lines(path: str) -> list[str] | None:
    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data:
        return None
    return data.decode(errors="surrogateescape").splitlines(True)


def _install(src: str, dst: str) -> None:
    """Copy with the time of now: the build must see the file as newer than what it built from it."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)
    os.utime(dst)


def _record(name: str, text: str) -> dict[str, str]:
    return {"name": name, "text": text, "sha256": hashlib.sha256(text.encode(errors="surrogateescape")).hexdigest()}


def _read_object(path: str, source: str) -> RelocatableObject:
    try:
        with open(path, "rb") as f:
            obj = parse_relocatable(f.read())
    except (OSError, ELFFormatError) as e:
        raise InvalidPatch(f"the object compiled from {source} cannot be read: {e}") from e
    if any(sec.name.startswith(".gnu.lto_") for sec in obj.sections.values()):
        raise InvalidPatch(f"{source} is compiled with link-time optimisation (-flto): its object holds no "
                           "code to compare", "build without -flto (--build with the project's flags minus -flto)")
    return obj


def _check_same_build(obj: RelocatableObject, binary: str, table: SymbolTable, source: str) -> None:
    """The binary must be a build of this source: each function of the unit it has must have its size.

    One section per function can lengthen x86-64 code: a jump to a function that shared the section
    was 2 bytes (rel8), and to another section is 5 or 6 (rel32). Each such jump may account for 4 bytes.
    """
    file = os.path.basename(source)
    local_code = {i for i, sec in obj.sections.items() if sec.sh_flags & 0x4}
    for sym in obj.defined_functions():
        found = [s for s in table.candidates(sym.name, ("func",))
                 if (s.bind == "local") == (sym.bind == "local") and (sym.bind != "local" or
                                                                   os.path.basename(s.file or "") == file)]
        if len(found) != 1 or found[0].size == sym.size:
            continue
        relaxable = 0
        if obj.machine == "x86_64":
            relaxable = sum(1 for r in obj.relocations.get(sym.shndx, [])   # type: ignore[arg-type]
                            if sym.value <= r.r_offset < sym.value + sym.size and r.r_type in (2, 4)
                            and obj.symbols[r.r_sym].shndx in local_code
                            and obj.symbols[r.r_sym].shndx != sym.shndx)
        if not sym.size - 4 * relaxable <= found[0].size <= sym.size:
            raise PatchMismatch(f"{os.path.basename(binary)} is not the build of this source: {sym.name} "
                                f"({source}) is {found[0].size} bytes in it, {sym.size} rebuilt",
                                "give the exact source and build command of the running binary")


def _check_folded(meta: patchfile.PatchMeta, table: SymbolTable, binary: str, origin: dict) -> None:
    """A replaced function whose code the binary shares with another function (identical code folding,
    -fipa-icf): the jump at that entry would take the other one too. Aliases of one function (its C1/C2
    constructors, a global and a local name) are replaced together and are fine."""
    replaced = {FILE_LOCAL.sub(r"\1", f.name) for f in meta.replace}
    for f in meta.replace:
        others = [a.name for a in table.aliases(f.offset) if a.name not in replaced]
        if others:
            raise InvalidPatch(f"{f.name} shares its code with {', '.join(others[:3])} in {os.path.basename(binary)} "
                               "(identical functions folded by the compiler): replacing it would replace them",
                               "build with -fno-ipa-icf (or -flive-patching=inline-clone), or change them alike")


def _read_debug(path: str) -> Debug | None:
    with open(path, "rb") as f:
        return read_debug(f.read())


def _why(name: str, debug: Debug | None, touched: dict[str, set[int]]) -> str:
    """Why a function is replaced: a line of it changed, or a function inlined into it changed, or
    only what the compiler made of it (a constant, a line number such as __LINE__'s, a layout)."""
    if debug is None:
        return "changed"
    name = FILE_LOCAL.sub(r"\1", name)
    fn = debug.functions.get(name) or debug.functions.get(_CLONE.sub("", name))

    def hit(f) -> bool:
        first, last = debug.span(f)
        return any(first <= n <= last for n in touched.get(f.file, ()))

    if fn is None or hit(fn):
        return "changed"
    inlined = [g for g in fn.inlined if g in debug.functions and hit(debug.functions[g])]
    if inlined:
        return f"inlines changed {', '.join(inlined)}"
    return "no line of it changed: a callee folded into it, a constant or a line number"


def _layout_changes(old: Debug | None, new: Debug | None, source: str) -> list[str]:
    """Structs whose size or member offsets differ: the running process holds data in the old layout."""
    if old is None or new is None:
        return []
    out = []
    for name, layout in new.structs.items():
        before = old.structs.get(name)
        if before is not None and before != layout:
            change = (f"{before[0]} -> {layout[0]} bytes" if before[0] != layout[0]
                      else "members moved")
            out.append(f"{source}: struct {name} changed layout ({change}): data of that type in the running "
                       "process keeps the old one")
    return out


def _gone_still_called(orig: Unit, changes) -> list[str]:
    """Functions the patched build no longer has, that unchanged functions of the unit (or, if global,
    any unit) still call in the running binary."""
    out = []
    changed = {normal_name(n) for n in changes.changed}
    for name in changes.gone:
        sym = orig.functions[normal_name(name)]
        if sym.bind != "local" or name.endswith(".cold") or ".cold." in name:
            if sym.bind != "local":
                out.append(name)
            continue
        for index, relocs in orig.obj.relocations.items():
            callers = {normal_name(c.name) for c in orig.placed.get(index, []) if c.kind == "func"}
            if not callers or callers & changed:
                continue
            if any(orig.obj.symbols[r.r_sym].shndx == sym.shndx for r in relocs):
                out.append(name)
                break
    return out


def _combine(objects: list[str], work: str, cc: str) -> bytes:
    if len(objects) == 1:
        path = objects[0]
    else:
        path = os.path.join(work, "patch.o")
        proc = subprocess.run([*shlex.split(cc), "-r", "-nostdlib", "-o", path, *objects],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise InvalidPatch("combining the extracted objects failed")
    with open(path, "rb") as f:
        return f.read()
