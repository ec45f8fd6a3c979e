"""The one harness of the live tests, the bench scripts and the ARM64 guest run.

- Program / Patch: what a scenario runs and applies, declared at module level
  (a C fixture and its flags; a patch source and the program it is built for).
- Builder: turns them into files, compiled here with the compiler of the
  architecture, or taken prebuilt from a manifest (the ARM64 guest has no
  compiler: tests/arm64/prepare.py cross-builds there what the scenarios
  marked arm64 declare).
- Target / Targets: a fixture process with a line protocol on stdin/stdout.
- hotpatch(), hotpatch_popen(), paused(), hotpatch_timed(): the CLI, a fresh
  process each time, as a user runs it.
- Assertion helpers on /proc: mappings_in, image_of, assert_no_wx, decode_jump.
- The cgroup v2 freezer: write, freeze (the v2_group fixture is in conftest.py).

Importable without pytest (bench/ uses it): `sys.path.insert(0, "<repo>/tests"); import harness`.
"""

import atexit
import contextlib
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")
HOST_ARCH = {"arm64": "aarch64"}.get(os.uname().machine, os.uname().machine)
ARCH = HOST_ARCH   # the architecture live scenarios run on (tests/arm64/prepare.py sets the guest's)
# The ARM64 guest emulates its CPU (qemu TCG): bounds on elapsed time are multiplied by this.
TIME_SCALE = float(os.environ.get("HOTPATCH_TEST_TIME_SCALE", "1"))
LINE_TIMEOUT = 20.0 * TIME_SCALE
MANIFEST = "manifest.json"


def _compiled_as_installed() -> None:
    """The CLI started by tests and benchmarks finds its bytecode compiled, as an installed package does
    (pip compiles it): where the environment forbids writing bytecode (PYTHONDONTWRITEBYTECODE), every
    start would compile the whole package again (about 0.1 s) and the benchmarks would time that. It goes
    to a private directory made for this run (a predictable shared one could be planted), never into the
    checkout. This process itself is not changed: its own settings were read at its start."""
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None and "PYTHONPYCACHEPREFIX" not in os.environ:
        prefix = tempfile.mkdtemp(prefix="hotpatch-bytecode-")
        atexit.register(shutil.rmtree, prefix, True)
        os.environ["PYTHONPYCACHEPREFIX"] = prefix


_compiled_as_installed()


def _prebuilt_dir() -> str | None:
    """Where prebuilt programs and patches are taken from, if anywhere: $HOTPATCH_PREBUILT, else
    build/<arch> when this machine has no C compiler (the ARM64 guest)."""
    if os.environ.get("HOTPATCH_PREBUILT"):
        return os.path.join(ROOT, os.environ["HOTPATCH_PREBUILT"])
    if shutil.which("gcc") is None:
        return os.path.join(ROOT, "build", {"aarch64": "arm64"}.get(HOST_ARCH, HOST_ARCH))
    return None


PREBUILT = _prebuilt_dir()


# -- what scenarios build --------------------------------------------------------------------

SPECS: list = []   # every Program and Patch declared so far, in order (tests/arm64/prepare.py reads it)


def _source_path(source: str) -> str:
    return os.path.join(FIXTURES, source)   # an absolute path stays as it is


def _slug(parts) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", "_".join(parts)).strip("_")


@dataclass(frozen=True)
class Program:
    """A fixture program: C sources (under fixtures/, or absolute) compiled with -O2 -g -pthread and flags.

    Program("target.c", "-fPIE", "-pie"): arguments starting with "-" are flags, the others sources.
    """
    sources: tuple[str, ...]
    flags: tuple[str, ...]

    def __init__(self, *args: str):
        object.__setattr__(self, "sources", tuple(a for a in args if not a.startswith("-")))
        object.__setattr__(self, "flags", tuple(a for a in args if a.startswith("-")))
        if not self.sources:
            raise ValueError("a program needs a source")
        SPECS.append(self)

    @property
    def key(self) -> str:
        return " ".join(self.sources + self.flags)

    @property
    def name(self) -> str:
        stem = "+".join(os.path.splitext(os.path.basename(s))[0] for s in self.sources)
        return stem + ("-" + _slug(self.flags) if self.flags else "")


@dataclass(frozen=True)
class Patch:
    """A patch built with `hotpatch build SOURCE --target PROGRAM EXTRA...` (EXTRA: e.g. --cflags ...)."""
    source: str
    program: Program
    extra: tuple[str, ...]

    def __init__(self, source: str, program: Program, *extra: str):
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "program", program)
        object.__setattr__(self, "extra", extra)
        SPECS.append(self)

    @property
    def key(self) -> str:
        return " ".join((self.source, "for", self.program.key) + self.extra)

    @property
    def name(self) -> str:
        stem = os.path.splitext(os.path.basename(self.source))[0]
        return f"{stem}-for-{self.program.name}" + ("-" + _slug(self.extra) if self.extra else "") + ".hp"


@dataclass(frozen=True)
class Project:
    """A project under fixtures/ built by its own Makefile (`make CC=...`); `binary` is the file it builds."""
    directory: str
    binary: str

    def __init__(self, directory: str, binary: str):
        object.__setattr__(self, "directory", directory)
        object.__setattr__(self, "binary", binary)
        SPECS.append(self)

    @property
    def key(self) -> str:
        return f"project {self.directory} {self.binary}"

    @property
    def name(self) -> str:
        return f"{self.directory}-{self.binary}"

    @property
    def sources(self) -> list[str]:
        top = os.path.join(ROOT, "fixtures", self.directory)
        return sorted(os.path.join(self.directory, f) for f in os.listdir(top)
                      if os.path.isfile(os.path.join(top, f)))


@dataclass(frozen=True)
class DiffPatch:
    """A patch built with `hotpatch build --diff fixtures/DIFF --source fixtures/PROJECT` for its binary."""
    diff: str
    project: Project

    def __init__(self, diff: str, project: Project):
        object.__setattr__(self, "diff", diff)
        object.__setattr__(self, "project", project)
        SPECS.append(self)

    @property
    def key(self) -> str:
        return f"{self.diff} for {self.project.key}"

    @property
    def name(self) -> str:
        return f"{os.path.splitext(os.path.basename(self.diff))[0]}-for-{self.project.name}.hp"


class MissingPrebuilt(LookupError):
    pass


def compiler_for(arch: str) -> str | None:
    """gcc for this machine's architecture, else the architecture's cross compiler if installed."""
    if arch == HOST_ARCH and shutil.which("gcc"):
        return "gcc"
    cross = f"{arch}-linux-gnu-gcc"
    return cross if shutil.which(cross) else None


def compile_c(out: str, sources, flags=(), cc: str = "gcc") -> str:
    """cc -O2 -g -pthread FLAGS -o OUT SOURCES LIBS (sources under fixtures/ unless absolute; -l flags last)."""
    libs = [f for f in flags if f.startswith("-l")]
    flags = [f for f in flags if not f.startswith("-l")]
    subprocess.run([cc, "-O2", "-g", "-pthread", *flags, "-o", out, *(_source_path(s) for s in sources), *libs],
                   check=True)
    return out


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Builder:
    """Files for Program and Patch specs, built once each into out_dir.

    With `prebuilt` (a directory holding a manifest written by a Builder), nothing
    is compiled: specs are looked up there, and refused if their sources changed since.
    """

    def __init__(self, out_dir: str, arch: str = ARCH, prebuilt: str | None = None):
        self.out_dir, self.arch, self.prebuilt = out_dir, arch, prebuilt
        self.built: dict[str, dict] = {}       # key -> {"path", "sources": {source: sha256}}
        if prebuilt is not None:
            try:
                with open(os.path.join(prebuilt, MANIFEST)) as f:
                    manifest = json.load(f)
            except FileNotFoundError:
                raise MissingPrebuilt(f"no {MANIFEST} in {prebuilt}: run tests/arm64/prepare.py first") from None
            if manifest["arch"] != arch:
                raise MissingPrebuilt(f"{prebuilt} holds {manifest['arch']} builds, not {arch}")
            self.built = manifest["built"]

    def __call__(self, spec: "Program | Patch") -> str:
        if spec.key not in self.built:
            if self.prebuilt is not None:
                raise MissingPrebuilt(f"{spec.key} was not prebuilt in {self.prebuilt}: declare it at module "
                                      "level of a scenario marked arm64 and rerun tests/arm64/prepare.py")
            self.built[spec.key] = self._build(spec)
        entry = self.built[spec.key]
        for source, digest in entry["sources"].items():
            if _digest(_source_path(source)) != digest:
                raise MissingPrebuilt(f"{source} changed since {spec.key} was built: rerun tests/arm64/prepare.py")
        return os.path.join(self.prebuilt or self.out_dir, entry["path"])

    def _build(self, spec) -> dict:
        if any(e["path"] == spec.name for e in self.built.values()):
            raise ValueError(f"two specs build {spec.name}")
        out = os.path.join(self.out_dir, spec.name)
        if isinstance(spec, Program):
            cc = compiler_for(self.arch)
            if cc is None:
                raise MissingPrebuilt(f"no C compiler for {self.arch} here")
            compile_c(out, spec.sources, spec.flags, cc)
            sources = spec.sources
        elif isinstance(spec, Project):
            cc = compiler_for(self.arch)
            if cc is None:
                raise MissingPrebuilt(f"no C compiler for {self.arch} here")
            with tempfile.TemporaryDirectory() as work:
                tree = os.path.join(work, spec.directory)
                shutil.copytree(os.path.join(ROOT, "fixtures", spec.directory), tree)
                subprocess.run(["make", "-s", f"CC={cc}"], cwd=tree, check=True, capture_output=True)
                shutil.copy2(os.path.join(tree, spec.binary), out)
            sources = spec.sources
        elif isinstance(spec, DiffPatch):
            binary = self(spec.project)
            env = {k: v for k, v in os.environ.items() if k != "CC"}
            r = subprocess.run([sys.executable, "-m", "hotpatch", "build", "--diff", _source_path(spec.diff),
                                "--source", os.path.join(ROOT, "fixtures", spec.project.directory),
                                "--target", binary, "-o", out], capture_output=True, text=True, env=env, cwd=ROOT)
            if r.returncode != 0:
                raise RuntimeError(f"hotpatch build {spec.key} failed: {r.stderr.strip()}")
            sources = (spec.diff, *spec.project.sources)
        else:
            binary = self(spec.program)
            # No CC: `hotpatch build` picks the compiler from the binary's architecture.
            env = {k: v for k, v in os.environ.items() if k != "CC"}
            r = subprocess.run([sys.executable, "-m", "hotpatch", "build", _source_path(spec.source),
                                "--target", binary, "-o", out, *spec.extra],
                               capture_output=True, text=True, env=env, cwd=ROOT)
            if r.returncode != 0:
                raise RuntimeError(f"hotpatch build {spec.key} failed: {r.stderr.strip()}")
            sources = (spec.source, *self.built[spec.program.key]["sources"])
        return {"path": spec.name, "sources": {s: _digest(_source_path(s)) for s in sources}}

    def write_manifest(self) -> str:
        path = os.path.join(self.out_dir, MANIFEST)
        with open(path, "w") as f:
            json.dump({"arch": self.arch, "built": self.built}, f, indent=1, sort_keys=True)
        return path


# -- processes -------------------------------------------------------------------------------

class Target:
    """A fixture process with a line protocol on stdin/stdout."""

    def __init__(self, argv: list[str], env: dict | None = None):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0,
                                     env={**os.environ, **env} if env else None)
        self.pid = self.proc.pid
        self._buf = b""

    def readline(self, timeout: float = LINE_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line from pid {self.pid} within {timeout} s "
                                     f"(exit {self.proc.poll()}, partial {self._buf!r})")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"pid {self.pid} closed stdout (exit {self.proc.wait()})")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def has_line(self) -> bool:
        """A line already waits (no wait)."""
        if b"\n" in self._buf:
            return True
        if select.select([self.proc.stdout], [], [], 0)[0]:
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            self._buf += chunk
        return b"\n" in self._buf

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def ask(self, text: str, timeout: float = LINE_TIMEOUT) -> str:
        self.send(text)
        return self.readline(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def maps(self) -> str:
        with open(f"/proc/{self.pid}/maps") as f:
            return f.read()

    def images(self) -> list[int]:
        """Start of every patch image in the process (applied, retired or pending): an anonymous mapping
        that begins with the record magic. Found by content, as hotpatch finds them: a mapping's name
        ([anon:hotpatch:...]) shows only where the kernel names anonymous mappings."""
        from hotpatch.live.records import MAGIC
        out = []
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as mem:
            for line in self.maps().splitlines():
                fields = line.split()
                if (len(fields) == 5 or fields[5].startswith("[anon:")) and fields[1].startswith("r"):
                    start = int(fields[0].split("-")[0], 16)
                    try:
                        mem.seek(start)
                        head = mem.read(len(MAGIC))
                    except OSError:
                        continue
                    if head == MAGIC:
                        out.append(start)
        return out

    def status(self, name: str) -> str:
        """A field of /proc/PID/status ("TracerPid", "State", "SigBlk"...)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == name:
                    return value.strip()
        raise KeyError(name)

    def syscalls(self) -> dict[int, int]:
        """tid -> number of the system call each thread is blocked (or stopped) in; -1 if running."""
        out = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            with open(f"/proc/{self.pid}/task/{tid}/syscall") as f:
                word = f.read().split()[0]
            out[int(tid)] = -1 if word == "running" else int(word)
        return out

    def read_mem(self, address: int, size: int) -> bytes:
        with open(f"/proc/{self.pid}/mem", "rb") as f:
            f.seek(address)
            return f.read(size)

    def write_mem(self, address: int, data: bytes) -> None:
        with open(f"/proc/{self.pid}/mem", "r+b") as f:
            f.seek(address)
            f.write(data)

    def symbol_address(self, binary: str, name: str) -> int:
        """Runtime address of a symbol of the main executable (bias from /proc/PID/maps)."""
        from elftools.elf.elffile import ELFFile
        with open(binary, "rb") as f:
            elf = ELFFile(f)
            value = next(s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()
                         if s.name == name)
            pie = elf.header["e_type"] == "ET_DYN"
        if not pie:
            return value
        real = os.path.realpath(binary)
        for line in self.maps().splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[5] == real and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16) + value
        raise AssertionError(f"{binary} not mapped in {self.pid}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


class Targets:
    """Starts targets and stops every one it started (a pytest fixture, or `with Targets() as start:`)."""

    def __init__(self):
        self.started: list[Target] = []

    def __call__(self, argv, ready_prefix: str | None = "ready", timeout: float = LINE_TIMEOUT,
                 env: dict | None = None) -> Target:
        t = Target(argv if isinstance(argv, list) else [argv], env)
        self.started.append(t)
        if ready_prefix is not None:
            line = t.readline(timeout)
            assert line.startswith(ready_prefix), line
        return t

    def stop_all(self) -> None:
        for t in self.started:
            t.stop()
        self.started.clear()

    def __enter__(self) -> "Targets":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


# -- the command line ---------------------------------------------------------------------------

def _cli_env(env) -> dict:
    full = dict(os.environ, **(env or {}))
    full.pop("HOTPATCH_DEBUG", None)
    return full


def hotpatch(*args: str, env=None, timeout: float = 120 * TIME_SCALE) -> subprocess.CompletedProcess:
    """Run the CLI as a user would: a fresh process each time."""
    return subprocess.run([sys.executable, "-m", "hotpatch", *args], capture_output=True, text=True,
                          timeout=timeout, env=_cli_env(env), cwd=ROOT)


def hotpatch_popen(*args: str, env=None) -> subprocess.Popen:
    """The CLI started, not waited for (text pipes on stdin, stdout, stderr)."""
    return subprocess.Popen([sys.executable, "-m", "hotpatch", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cli_env(env),
                            cwd=ROOT)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the executor of a running CLI command)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2:].split()[1]) == pid:
                out.append(int(entry))
    return out


@contextlib.contextmanager
def paused(*args: str, at: str):
    """Run the CLI held at step `at` (HOTPATCH_PAUSE_AT): the body runs while it waits there;
    on leaving, it goes on and must exit 0 (its output is then in .out and .err)."""
    p = hotpatch_popen(*args, env={"HOTPATCH_PAUSE_AT": at})
    try:
        line = p.stderr.readline().strip()
        assert line == f"hotpatch: paused at {at}", line + p.stderr.read()
        yield p
        p.stdin.write("\n")
        p.stdin.flush()
        p.out, p.err = p.communicate(timeout=60 * TIME_SCALE)
        assert p.returncode == 0, p.err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for f in (p.stdin, p.stdout, p.stderr):
            f.close()


def hotpatch_timed(*args: str) -> tuple[float, float, str]:
    """(wall ms, peak RSS MB of the CLI process, stdout); raises if it fails. For the benchmarks."""
    # Output goes to files: waiting for exit (wait4, for the child's own peak
    # memory) with a pipe full of a large JSON report would deadlock.
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "hotpatch", *args], stdout=out_f, stderr=err_f, cwd=ROOT,
                             env=_cli_env(None))
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = (time.perf_counter() - t0) * 1000
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read().decode(), err_f.read().decode()
    if p.returncode != 0:
        raise RuntimeError(f"hotpatch {' '.join(args)} failed: {err.strip()}")
    return wall, usage.ru_maxrss / 1024, out


# -- what to look at -----------------------------------------------------------------------------

def mappings_in(maps: str, base: int, size: int) -> list[str]:
    """Lines of /proc/PID/maps inside [base, base+size): the parts of a patch image."""
    out = []
    for line in maps.splitlines():
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start < base + size and end > base:
            out.append(line)
    return out


def image_of(report: dict) -> tuple[int, int]:
    return int(report["image"]["base"], 16), report["image"]["size"]


def assert_no_wx(maps: str) -> None:
    """No mapping writable and executable at once."""
    for line in maps.splitlines():
        perms = line.split()[1]
        assert not ("w" in perms and "x" in perms), line


def new_address(report: dict, function: str) -> int:
    """Where apply's JSON report says `function` now lives."""
    return int(next(f["new"] for f in report["functions"] if f["name"] == function), 16)


def decode_jump(arch: str, code: bytes, site: int) -> tuple[str, int]:
    """(form, destination) of the jump at the start of `code`, which runs at `site`.

    x86-64: near = jmp rel32, far = jmp [rip] + 8-byte address. AArch64: near = b,
    page = adrp x16; add x16, x16; br x16, far = ldr x16, #8; br x16 + 8-byte address.
    """
    import capstone
    if arch == "x86_64":
        insn = next(capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm(code, site))
        if insn.mnemonic == "jmp" and insn.op_str == "qword ptr [rip]":
            return "far", int.from_bytes(code[insn.size:insn.size + 8], "little")
        assert insn.mnemonic == "jmp" and insn.size == 5, (insn.mnemonic, insn.op_str, code.hex())
        return "near", int(insn.op_str, 16)
    cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    cs.detail = True
    insns = list(cs.disasm(code[:12], site))
    names = [(i.mnemonic, i.op_str) for i in insns]
    if names and names[0][0] == "b":
        return "near", insns[0].operands[0].imm
    if [n for n, _ in names[:3]] == ["adrp", "add", "br"] and names[2][1] == "x16":
        return "page", insns[0].operands[1].imm + insns[1].operands[2].imm
    assert names[:2] == [("ldr", f"x16, #{site + 8:#x}"), ("br", "x16")], (names, code.hex())
    return "far", int.from_bytes(code[8:16], "little")


def trusted_signer(directory) -> tuple[str, str]:
    """(private key, trust file) of a throwaway ed25519 signer trusted for namespace hotpatch, under
    `directory` (the trust file in a root-owned etc/ of its own, as hotpatch requires)."""
    key = os.path.join(str(directory), "admin")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    kind, blob = open(f"{key}.pub").read().split()[:2]
    etc = os.path.join(str(directory), "etc")
    os.mkdir(etc, mode=0o755)
    trust = os.path.join(etc, "allowed_signers")
    with open(trust, "w") as f:
        f.write(f'admin namespaces="hotpatch" {kind} {blob}\n')
    return key, trust


def until(check, what: str, seconds: float = 20) -> None:
    """Wait for check() to hold (polled every 50 ms), failing with `what` after `seconds`."""
    deadline = time.monotonic() + seconds * TIME_SCALE
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def host_only(reason: str) -> list:
    """pytestmark of a live scenario that cannot run on prebuilt files (the ARM64 guest), and why."""
    import pytest
    return [pytest.mark.host_only(reason),
            pytest.mark.skipif(PREBUILT is not None, reason=f"not run on prebuilt files: {reason}")]


def process_state(t: Target, binary: str, functions, size: int = 32) -> tuple[dict, str, str]:
    """(the first bytes of each function, /proc/PID/maps, TracerPid): what an undone operation restores."""
    code = {f: t.read_mem(t.symbol_address(binary, f), size) for f in functions}
    return code, t.maps(), t.status("TracerPid")


def arch_with_syscalls(**numbers: int):
    """This machine's Arch, knowing more system calls by number (remote calls a filter should judge)."""
    from hotpatch.arch import get_arch
    base = type(get_arch(ARCH))
    return type(f"{base.__name__}Probe", (base,), {"syscall_numbers": {**base.syscall_numbers, **numbers}})()


# -- the cgroup v2 freezer (the v2_group fixture is in conftest.py) ---------------------------------

def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def freeze(group: str, on: bool) -> None:
    """Freeze or thaw a cgroup v2 group, and wait until the kernel says it is done."""
    write(os.path.join(group, "cgroup.freeze"), "1" if on else "0")
    deadline = time.monotonic() + 10 * TIME_SCALE
    while f"frozen {int(on)}" not in open(os.path.join(group, "cgroup.events")).read():
        assert time.monotonic() < deadline
        time.sleep(0.01)   # cgroup.events can be polled, but a poll loop is as good for a test


DEB_SRC_CACHE = os.environ.get("HOTPATCH_DEB_SRC_CACHE",
                               os.path.join(os.path.expanduser("~"), ".cache", "hotpatch-tests", "deb-src"))


def debian_source(package: str) -> tuple[str, str]:
    """(upstream tarball, Debian tarball) of a Debian source package, fetched once with `apt-get source
    --download-only` (needs deb-src lines: .ci/run adds them). RuntimeError says why it cannot be had."""
    import glob
    where = os.path.join(DEB_SRC_CACHE, package)
    os.makedirs(where, exist_ok=True)

    def found():
        orig = glob.glob(os.path.join(where, "*.orig.tar.*"))
        debian = glob.glob(os.path.join(where, "*.debian.tar.*"))
        return (orig[0], debian[0]) if orig and debian else None

    if found() is None:
        r = subprocess.run(["apt-get", "source", "--download-only", "-qq", package], cwd=where,
                           capture_output=True, text=True)
        if found() is None:
            raise RuntimeError(f"apt-get source {package} failed: {(r.stderr or r.stdout).strip()[-300:]}")
    return found()


def unpack(tarball: str, dest: str) -> str:
    """Extract a source tarball's top directory's contents into `dest`."""
    os.makedirs(dest, exist_ok=True)
    subprocess.run(["tar", "-xf", tarball, "-C", dest, "--strip-components=1"], check=True)
    return dest
