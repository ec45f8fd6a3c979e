"""`hotpatch daemon` keeps every process patched with the installed (signed) patches: those running when
it starts, and each one started later (a process-events notification, or the next poll). `install`
refuses an unsigned patch; `uninstall` reverts it everywhere. The daemon stops on SIGTERM."""

import os
import shutil
import signal
import subprocess
import sys

import pytest
from harness import ROOT, TIME_SCALE, Patch, Program, host_only, hotpatch, trusted_signer, until

pytestmark = host_only("ssh-keygen signs on this host; the daemon runs here")

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


@pytest.fixture
def signed(build, tmp_path):
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    key, trust = trusted_signer(tmp_path)
    patch = tmp_path / "fix.hp"
    shutil.copy(build(FIX), patch)
    assert hotpatch("sign", str(patch), "--key", key).returncode == 0
    return str(patch), trust


def test_daemon_patches_old_and_new_processes(build, spawn, tmp_path, signed):
    patch, trust = signed
    patch_dir = str(tmp_path / "patches")
    unsigned = str(tmp_path / "unsigned.hp")
    shutil.copy(build(FIX), unsigned)
    r = hotpatch("install", unsigned, "--patch-dir", patch_dir, "--trust", trust)
    assert r.returncode == 9 and "is not signed" in r.stderr, r.stderr
    r = hotpatch("install", patch, "--patch-dir", patch_dir, "--trust", trust)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(patch_dir)) == ["fix.hp", "fix.hp.sig"]

    before = spawn(build(TARGET))
    daemon = subprocess.Popen([sys.executable, "-m", "hotpatch", "daemon", "--patch-dir", patch_dir, "--trust", trust,
                               "--interval", "0.5"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        until(lambda: before.ask("compute 5") == "51", "the process running before was not patched")
        after = spawn(build(TARGET))
        until(lambda: after.ask("compute 5") == "51", "a process started later was not patched")
        r = hotpatch("list", str(after.pid), "--json")
        assert r.stdout.count('"patch": "fix.hp"') == 1          # once, however many passes
        r = hotpatch("uninstall", "fix.hp", "--patch-dir", patch_dir)
        assert r.returncode == 0, r.stderr
        assert before.ask("compute 5") == "11" and after.ask("compute 5") == "11"
        assert os.listdir(patch_dir) == []
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert f"patched process {before.pid}" in err and f"patched process {after.pid}" in err, err


LIBRARY = Program("plugin.c", "-shared", "-fPIC")
HOST = Program("plugin_cycle.c", "-ldl")
PLUGIN_FIX = Patch("patch_plugin.c", LIBRARY)


def sign_copy(build, tmp_path, spec, name: str) -> str:
    key = tmp_path / "admin"
    patch = tmp_path / name
    shutil.copy(build(spec), patch)
    assert hotpatch("sign", str(patch), "--key", str(key)).returncode == 0
    return str(patch)


def test_library_dlopened_later_and_a_restart(build, spawn, tmp_path, signed):
    """A library a process loads after the daemon started is patched by the next poll; the daemon killed
    with SIGKILL and started again applies nothing twice."""
    _patch, trust = signed
    patch = sign_copy(build, tmp_path, PLUGIN_FIX, "plugin.hp")
    patch_dir = str(tmp_path / "patches")
    assert hotpatch("install", patch, "--patch-dir", patch_dir, "--trust", trust).returncode == 0
    t = spawn([build(HOST), build(LIBRARY)])
    cmd = [sys.executable, "-m", "hotpatch", "daemon", "--patch-dir", patch_dir, "--trust", trust, "--interval", "0.3"]
    daemon = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert t.ask("load") == "loaded"
        until(lambda: t.ask("score 3") == "1006", "the library loaded later was not patched")
    finally:
        daemon.kill()
        daemon.communicate(timeout=30)
    r = subprocess.run(cmd + ["--once"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    listed = hotpatch("list", str(t.pid), "--json")
    assert listed.stdout.count('"patch": "plugin.hp"') == 1, listed.stdout   # not applied twice
    assert t.ask("score 3") == "1006" and t.status("TracerPid") == "0"


def test_trust_made_unsafe_and_a_patch_changed(build, spawn, tmp_path, signed):
    """The daemon keeps each patch verified while its files stay the same, but a trust directory made
    writable by others stops every patch at the next pass, and a patch file changed after it was signed is
    refused (not the bytes verified earlier applied under its name)."""
    patch, trust = signed
    patch_dir = str(tmp_path / "patches")
    assert hotpatch("install", patch, "--patch-dir", patch_dir, "--trust", trust).returncode == 0
    t = spawn(build(TARGET))
    once = [sys.executable, "-m", "hotpatch", "daemon", "--patch-dir", patch_dir, "--trust", trust, "--once"]
    etc = os.path.dirname(trust)
    os.chmod(etc, 0o757)
    try:
        r = subprocess.run(once, cwd=ROOT, capture_output=True, text=True, timeout=60 * TIME_SCALE)
    finally:
        os.chmod(etc, 0o755)
    assert r.returncode == 0 and "every patch skipped" in r.stderr and "writable by others" in r.stderr, r.stderr
    assert t.ask("compute 5") == "11"
    installed = os.path.join(patch_dir, "fix.hp")
    with open(installed, "r+b") as f:   # one byte of the installed patch changed after signing
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    r = subprocess.run(once, cwd=ROOT, capture_output=True, text=True, timeout=60 * TIME_SCALE)
    assert r.returncode == 0 and "skipped fix.hp" in r.stderr and "does not verify" in r.stderr, r.stderr
    assert t.ask("compute 5") == "11"
    shutil.copy(patch, installed)   # the signed bytes again
    r = subprocess.run(once, cwd=ROOT, capture_output=True, text=True, timeout=60 * TIME_SCALE)
    assert r.returncode == 0 and f"patched process {t.pid}" in r.stderr, r.stderr
    assert t.ask("compute 5") == "51"


def test_installed_patches_kept_while_the_same(tmp_path, signed, capsys):
    """The daemon's view of its patch directory: a patch read and verified once is kept while its files,
    its signature and the trust file stay the same; a change to any is checked again, and a patch changed
    or removed is no longer applied, even in the pass under way (Installed.still)."""
    from hotpatch.ops.daemon import Installed
    patch, trust = signed
    patch_dir = tmp_path / "patches"
    patch_dir.mkdir(mode=0o755)
    shutil.copy(patch, patch_dir / "fix.hp")
    shutil.copy(patch + ".sig", patch_dir / "fix.hp.sig")
    installed = Installed(str(patch_dir), trust)
    first = installed.current()
    assert [p.path for p in first] == [str(patch_dir / "fix.hp")] and first[0].signer == "admin"
    assert installed.current()[0] is first[0] and installed.still(first[0])   # kept, not verified again
    data = (patch_dir / "fix.hp").read_bytes()
    (patch_dir / "fix.hp").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert not installed.still(first[0])
    assert installed.current() == [] and "does not verify" in capsys.readouterr().err
    (patch_dir / "fix.hp").write_bytes(data)
    again = installed.current()
    assert len(again) == 1 and again[0] is not first[0]
    os.chmod(os.path.dirname(trust), 0o757)   # the trust file's directory writable by others
    try:
        assert installed.current() == [] and "writable by others" in capsys.readouterr().err
    finally:
        os.chmod(os.path.dirname(trust), 0o755)
    assert len(installed.current()) == 1
    os.remove(patch_dir / "fix.hp")   # uninstall
    assert not installed.still(again[0]) and installed.current() == []
