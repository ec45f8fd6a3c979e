"""Signed patches: `hotpatch sign` makes an OpenSSH signature (SSHSIG, namespace hotpatch) that
`ssh-keygen -Y verify` accepts too; with a trust file (an OpenSSH allowed-signers list) apply takes only
patches signed by a key in it. Unsigned, tampered, signed by an unknown key or for another namespace, or
with a trust file others can write: exit 9 with one line, and the process untouched."""

import os
import shutil
import subprocess

import pytest
from harness import Patch, Program, host_only, hotpatch

pytestmark = host_only("ssh-keygen signs on this host")

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def keygen(path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "admin", "-f", str(path)], check=True)
    return (open(f"{path}.pub").read().split()[:2])


@pytest.fixture
def trust(tmp_path):
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed (.ci/run installs openssh-client)")
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    kind, blob = keygen(keys / "admin")
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    allowed = etc / "allowed_signers"
    allowed.write_text(f'admin@example namespaces="hotpatch" {kind} {blob}\n')
    allowed.chmod(0o644)
    return keys, str(allowed)


def signed_copy(build, tmp_path, keys, name="fix.hp") -> str:
    patch = str(tmp_path / name)
    shutil.copy(build(FIX), patch)
    r = hotpatch("sign", patch, "--key", str(keys / "admin"))
    assert r.returncode == 0, r.stderr
    assert os.path.exists(patch + ".sig")
    return patch


def test_signed_patch_applies_and_verifies_with_ssh_keygen(build, spawn, tmp_path, trust):
    keys, allowed = trust
    patch = signed_copy(build, tmp_path, keys)
    with open(patch, "rb") as f:
        r = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", allowed, "-I", "admin@example", "-n", "hotpatch",
                            "-s", patch + ".sig"], stdin=f, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    t = spawn(build(TARGET))
    r = hotpatch(str(t.pid), patch, "--trust", allowed, "--json")
    assert r.returncode == 0, r.stderr
    assert '"signed_by": "admin@example"' in r.stdout
    assert t.ask("compute 5") == "51"


def test_untrusted_patches_refused(build, spawn, tmp_path, trust):
    keys, allowed = trust
    t = spawn(build(TARGET))
    before = t.maps()

    def refused(patch, why, trust_file=allowed):
        r = hotpatch(str(t.pid), patch, "--trust", trust_file)
        assert r.returncode == 9 and why in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
        assert t.maps() == before and t.ask("compute 5") == "11" and t.status("TracerPid") == "0"

    unsigned = str(tmp_path / "unsigned.hp")
    shutil.copy(build(FIX), unsigned)
    refused(unsigned, "is not signed")

    tampered = signed_copy(build, tmp_path, keys, "tampered.hp")
    with open(tampered, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    refused(tampered, "does not verify")

    stranger = tmp_path / "stranger"
    keygen(stranger)
    other = str(tmp_path / "other.hp")
    shutil.copy(build(FIX), other)
    assert hotpatch("sign", other, "--key", str(stranger)).returncode == 0
    refused(other, "is not in")

    wrong_use = str(tmp_path / "wrong.hp")
    shutil.copy(build(FIX), wrong_use)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(keys / "admin"), "-n", "file", wrong_use],
                   check=True, capture_output=True)
    refused(wrong_use, "does not verify")

    good = signed_copy(build, tmp_path, keys, "good.hp")
    os.chmod(allowed, 0o666)
    refused(good, "is writable by others")
