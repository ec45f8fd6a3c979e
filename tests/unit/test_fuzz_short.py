"""A short run of the patch-file fuzzer (bench/fuzz_patchfile.py): hostile patch files are linked or
refused with exit 6 and one line; never another exception, a hang, a memory blow-up or a process touched.

The full campaign is `python3 bench/fuzz_patchfile.py` (10,000 cases). HOTPATCH_FUZZ_SEED picks another
run of cases here; a failure prints each crash with its reproducer under /tmp/hotpatch-fuzz.
"""

import importlib.util
import io
import os
import sys
import time

import pytest
from harness import ROOT

from hotpatch.errors import InvalidPatch, UsageError

CASES = 300


def _load_fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_patchfile", os.path.join(ROOT, "bench", "fuzz_patchfile.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # its records cross to the worker process by pickle
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzzer()


@pytest.fixture(scope="module")
def seeds():
    return fuzz.build_seeds()


def test_short_run_finds_no_crash(seeds):
    seed = int(os.environ.get("HOTPATCH_FUZZ_SEED", "0"))
    started = time.monotonic()
    report = fuzz.fuzz(CASES, seed, seeds=seeds)
    assert report.cases == CASES
    # Mutations reach every layer: some inputs still link, many are refused for many reasons.
    assert report.accepted > CASES // 10 and report.refused > CASES // 3
    assert len(report.refusal_kinds) >= 20
    if report.crashes:
        out = io.StringIO()
        fuzz.print_report(report, seed, out, kinds=False)
        pytest.fail(f"fuzzing found crashes:\n{out.getvalue()}", pytrace=False)
    assert time.monotonic() - started < 60


# -- the harness catches what it is meant to catch ---------------------------------

def _planted(monkeypatch, fault) -> "fuzz.Outcome":
    """Run one case in a worker whose code under test is replaced by `fault`."""
    monkeypatch.setattr(fuzz, "check_case", lambda data, params: fault())
    monkeypatch.setattr(fuzz, "CASE_TIMEOUT", 0.3)
    worker = fuzz.Worker()
    try:
        return worker.run(b"", fuzz.LinkParams(0x10_0000, 0, False))
    finally:
        worker.close()


def _raise(error: BaseException):
    def fault():
        raise error
    return fault


class _TwoLines(InvalidPatch):
    def line(self) -> str:     # whatever escaping hotpatch does, this one is not one line
        return "two\nlines"


def _sleep():
    while True:
        time.sleep(0.01)


def _swallowing_sleep():
    try:
        _sleep()
    except Exception:     # as the ELF reader's blanket except would
        pass


@pytest.mark.parametrize("fault, verdict", [
    (lambda: None, "accepted"),
    (_raise(InvalidPatch("bad section")), "refused"),
    (_raise(KeyError("missing")), "exception"),
    (_sleep, "hang"),
    (_swallowing_sleep, "hang"),
    (lambda: bytearray(4 << 30), "memory"),
    (lambda: bytearray(300 << 20), "memory"),
    (lambda: open("/proc/1/mem", "rb"), "access"),
    (lambda: os.kill(os.getpid(), 0), "access"),
    (_raise(_TwoLines("x")), "message"),
    (_raise(UsageError("not exit 6")), "exit-code"),
    (lambda: os._exit(3), "died"),
])
def test_harness_detects(monkeypatch, fault, verdict):
    assert _planted(monkeypatch, fault).verdict == verdict
