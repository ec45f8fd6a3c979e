"""ARM64 live suite: real aarch64 processes patched by the real kernel (run inside the
qemu-system guest by .ci/arm64; fixtures cross-built by tests/arm64/prepare.py).
Skipped on other machines."""

import ctypes
import json
import os
import struct
import subprocess
import sys
import threading
import time

import pytest
from harness import ROOT, Target

pytestmark = pytest.mark.skipif(os.uname().machine != "aarch64", reason="runs on an aarch64 kernel")
BUILD = os.path.join(ROOT, "build", "arm64")
BTI_C, PACIASP = 0xD503245F, 0xD503233F


def binary(name):
    return os.path.join(BUILD, name)


def patch(name):
    return os.path.join(BUILD, name)


def hp(*args, env=None):
    return subprocess.run([sys.executable, "-m", "hotpatch", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, **(env or {})), timeout=600)


@pytest.fixture
def start():
    started = []

    def run(name, *argv):
        t = Target([binary(name), *argv])
        started.append(t)
        assert t.readline(timeout=120).startswith("ready")
        return t
    yield run
    for t in started:
        t.stop()


def word_at(t, address):
    return struct.unpack("<I", t.read_mem(address, 4))[0]


def test_apply_list_revert(start):
    t = start("target")
    entry = t.symbol_address(binary("target"), "compute")
    before = t.read_mem(entry, 32)
    assert t.ask("compute 5") == "11" and t.ask("inc") == "42"
    r = hp(str(t.pid), patch("target.hp"), "--json")
    assert r.returncode == 0, r.stderr
    assert all(f["jump"] == "near" for f in json.loads(r.stdout)["functions"])
    assert t.ask("compute 5") == "52"            # static helper and static counter of the target
    assert t.ask("ptr 5") == "52" and t.ask("fact 4") == "24000"
    assert t.ask("version") == "v2-patched-calls=2"
    r = hp("list", str(t.pid), "--json")
    assert [p["status"] for p in json.loads(r.stdout)["patches"]] == ["active"]
    assert hp("revert", str(t.pid)).returncode == 0
    assert t.read_mem(entry, 32) == before
    assert t.ask("compute 5") == "11"


def test_branch_protection_entries(start):
    t = start("target-pac")
    entries = {f: t.symbol_address(binary("target-pac"), f) for f in ("compute", "fact", "version")}
    before = {f: t.read_mem(a, 32) for f, a in entries.items()}
    first = {f: struct.unpack("<I", b[:4])[0] for f, b in before.items()}
    assert set(first.values()) <= {BTI_C, PACIASP} and first["compute"] in (BTI_C, PACIASP)
    r = hp(str(t.pid), patch("target-pac.hp"))
    assert r.returncode == 0, r.stderr
    for f, a in entries.items():
        assert word_at(t, a) == BTI_C               # paciasp became bti c; bti c kept
        assert word_at(t, a + 4) >> 26 == 0b000101  # then a b
    assert t.ask("compute 5") == "51" and t.ask("ptr 5") == "51"
    assert hp("revert", str(t.pid)).returncode == 0
    assert {f: t.read_mem(a, 32) for f, a in entries.items()} == before
    assert t.ask("compute 5") == "11"


def test_busy_thread(start):
    t = start("busy")
    entry = t.symbol_address(binary("busy"), "work")
    code, maps = t.read_mem(entry, 32), t.maps()
    r = hp(str(t.pid), patch("busy.hp"), "--timeout", "1")
    assert r.returncode == 3, r.stderr
    assert "work" in r.stderr
    assert t.read_mem(entry, 32) == code and t.maps() == maps
    assert t.ask("work 1") == "2"


def test_blocked_read_and_nanosleep(start):
    t = start("blocking")
    assert t.ask("hello") == "echo hello 8"
    t.send("sleep 3000")
    assert t.readline() == "sleeping"
    r = hp(str(t.pid), patch("blocking.hp"))
    assert r.returncode == 0, r.stderr
    rc, elapsed = t.readline(timeout=120).split()[1:]
    assert rc == "0" and int(elapsed) >= 3000
    assert t.ask("after") == "echo after 1007"


def test_signals_delivered_once(start):
    t = start("signals")
    libc = ctypes.CDLL(None, use_errno=True)
    sig = libc.__libc_current_sigrtmin() + 1

    class sigval(ctypes.Union):
        _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]
    sent, stop = [], threading.Event()

    def sender():
        i = 0
        while not stop.is_set():
            if libc.sigqueue(t.pid, sig, sigval(i + 1)) == 0:
                i += 1
                sent.append(i)
            time.sleep(0.0005)
    for command in (["apply", str(t.pid), patch("signals.hp")], ["revert", str(t.pid)]):
        stop.clear()
        th = threading.Thread(target=sender)
        th.start()
        r = hp(*command)
        stop.set()
        th.join()
        assert r.returncode == 0, r.stderr
    count, total = map(int, t.ask("stats").split())
    assert (count, total) == (len(sent), sum(sent)) and count > 10


def test_far_image_ldr_form_and_veneers(start):
    t = start("target")
    entry = t.symbol_address(binary("target"), "compute")
    before = t.read_mem(entry, 32)
    r = hp(str(t.pid), patch("far.hp"), "--json", env={"HOTPATCH_FAR_IMAGE": "1"})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {f["jump"] for f in report["functions"]} == {"far"}
    assert word_at(t, entry) == 0x58000050 and word_at(t, entry + 4) == 0xD61F0200   # ldr x16, #8; br x16
    assert t.ask("inc") == "42"
    assert t.ask("compute 5") == "52"       # helper, counter and libc through veneers and GOT slots
    assert t.ask("fact 3") == "6000"
    assert hp("revert", str(t.pid)).returncode == 0
    assert t.read_mem(entry, 32) == before
