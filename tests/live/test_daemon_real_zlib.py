"""Real software under the daemon: CPython interpreters using Debian's libz (zlib1g), the patch built from
bench/real_zlib_server/fix_crc.c for that library. One interpreter was running before the daemon and
loads libz only later (`import zlib`: a dlopen, seen by the daemon's poll); one is started after the patch
was installed (an exec, seen through the process-events connector or the poll). Both answer with the
patched crc32, and with the real one again after `uninstall`; neither is harmed."""

import os
import shutil
import signal
import subprocess
import sys
import zlib

import pytest
from harness import ROOT, host_only, hotpatch, trusted_signer, until

pytestmark = host_only("ssh-keygen signs on this host; the daemon runs here")

SERVICE = os.path.join(ROOT, "fixtures", "zlib_service.py")
FIX = os.path.join(ROOT, "bench", "real_zlib_server", "fix_crc.c")


def libz() -> str:
    """The libz.so.1 this interpreter's zlib module uses, as mapped in a process that imported it."""
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "/libz.so" in line}
    if len(paths) != 1:
        pytest.skip(f"this Python's zlib does not use one shared libz ({sorted(paths)})")
    return paths.pop()


def test_daemon_patches_real_interpreters(spawn, tmp_path):
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    key, trust = trusted_signer(tmp_path)
    library = libz()
    patch = str(tmp_path / "crc.hp")
    r = hotpatch("build", FIX, "--target", library, "-o", patch)
    assert r.returncode == 0, r.stderr
    assert hotpatch("sign", patch, "--key", key).returncode == 0
    patch_dir = str(tmp_path / "patches")
    assert hotpatch("install", patch, "--patch-dir", patch_dir, "--trust", trust).returncode == 0

    early = spawn([sys.executable, "-S", SERVICE])   # -S: no site module, which may import zipfile, so zlib
    if getattr(zlib, "__file__", None):              # a shared extension module: libz comes with `import zlib`
        assert library not in early.maps()
    daemon = subprocess.Popen([sys.executable, "-m", "hotpatch", "daemon", "--patch-dir", patch_dir, "--trust", trust,
                               "--interval", "0.5"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        late = spawn([sys.executable, "-S", SERVICE, "--import"])
        assert early.ask("import") == "imported"
        text = "hello, zlib"
        patched = f"{0x0B0B0000 + len(text):#x}"
        assert f"{zlib.crc32(text.encode()):#x}" != patched
        until(lambda: early.ask(f"crc {text}") == patched, "the interpreter that loaded libz later was not patched")
        until(lambda: late.ask(f"crc {text}") == patched, "the interpreter started after install was not patched")
        for t in (early, late):
            listed = hotpatch("list", str(t.pid), "--json")
            assert listed.stdout.count('"patch": "crc.hp"') == 1, listed.stdout
        r = hotpatch("uninstall", "crc.hp", "--patch-dir", patch_dir)
        assert r.returncode == 0, r.stderr
        for t in (early, late):
            assert t.ask(f"crc {text}") == f"{zlib.crc32(text.encode()):#x}"
            assert t.alive() and t.status("TracerPid") == "0"
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert f"patched process {early.pid}" in err and f"patched process {late.pid}" in err, err
