"""Helpers for live tests: compile fixtures with gcc, run them, talk to them, run the CLI."""

import os
import re
import select
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")
LINE_TIMEOUT = 20.0


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fixtures"))


class Compiler:
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.cache = {}

    def program(self, source: str, *flags: str, name: str | None = None) -> str:
        key = (source, flags)
        if key not in self.cache:
            out = os.path.join(self.out_dir, name or (os.path.splitext(source)[0] + "-" +
                                                      re.sub(r"[^a-z0-9]+", "_", "_".join(flags))))
            cmd = ["gcc", "-O2", "-g", "-pthread", *flags, "-o", out, os.path.join(FIXTURES, source)]
            subprocess.run(cmd, check=True)
            self.cache[key] = out
        return self.cache[key]

    def patch(self, source: str, target: str, *extra: str, env=None) -> str:
        out = os.path.join(self.out_dir, f"{os.path.splitext(source)[0]}-for-{os.path.basename(target)}.hp")
        result = hotpatch("build", os.path.join(FIXTURES, source), "--target", target, "-o", out, *extra,
                          env=env)
        assert result.returncode == 0, result.stderr
        return out


@pytest.fixture(scope="session")
def cc(build_dir):
    return Compiler(build_dir)


def hotpatch(*args: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI as a user would: a fresh process each time."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("HOTPATCH_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "hotpatch", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


class Target:
    """A fixture process with a line protocol on stdin/stdout."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0)
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

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def ask(self, text: str) -> str:
        self.send(text)
        return self.readline()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def maps(self) -> str:
        with open(f"/proc/{self.pid}/maps") as f:
            return f.read()

    def read_mem(self, address: int, size: int) -> bytes:
        with open(f"/proc/{self.pid}/mem", "rb") as f:
            f.seek(address)
            return f.read(size)

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


@pytest.fixture
def spawn():
    started = []

    def start(argv, ready_prefix: str | None = "ready") -> Target:
        t = Target(argv if isinstance(argv, list) else [argv])
        started.append(t)
        if ready_prefix is not None:
            line = t.readline()
            assert line.startswith(ready_prefix), line
        return t
    yield start
    for t in started:
        t.stop()


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
    for line in maps.splitlines():
        perms = line.split()[1]
        assert not ("w" in perms and "x" in perms), line
