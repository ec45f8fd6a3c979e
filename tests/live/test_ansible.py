"""The Ansible collection, run for real: ansible-playbook (ansible-core from PyPI) on this machine over a
local connection, and on a second "host" reached over SSH (openssh-server started on a loopback address with
throwaway keys): a patch applied to every process of its binary, a second run changes nothing, check mode
changes nothing, state=absent reverts it; the facts module reports it."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from harness import ROOT, Patch, Program, host_only

pytestmark = host_only("ansible-playbook runs on this host")

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)
PLAYBOOK = os.path.join(ROOT, "ansible", "playbook-example.yml")


def playbook(patch: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, "ansible"), "PYTHONPATH": ROOT,
           "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False"}
    return subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", PLAYBOOK, "-e", f"patch={patch}",
                           "-e", f"hotpatch_executable='{sys.executable} -m hotpatch'",
                           "-e", f"ansible_python_interpreter={sys.executable}", *extra],
                          capture_output=True, text=True, env=env, timeout=300)


def changed(r: subprocess.CompletedProcess) -> bool:
    """Whether the rollout task changed anything: the recap's count (the other tasks never change)."""
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    recap = r.stdout[r.stdout.rindex("PLAY RECAP"):]
    assert "failed=0" in recap, recap
    return int(recap.split("changed=")[1].split()[0]) > 0


def test_playbook(build, spawn):
    if shutil.which("ansible-playbook") is None:
        pytest.skip("ansible-core is not installed (pip install '.[test]' installs it)")
    ts = [spawn(build(TARGET)) for _ in range(2)]
    patch = build(FIX)
    assert changed(playbook(patch, "--check"))
    assert all(t.ask("compute 5") == "11" for t in ts)                           # check mode: nothing done
    r = playbook(patch)
    assert changed(r) and all(t.ask("compute 5") == "51" for t in ts)
    assert f"[{', '.join(str(p) for p in sorted(t.pid for t in ts))}]" in r.stdout.replace("'", "")   # the facts
    assert not changed(playbook(patch))                                          # idempotent
    assert changed(playbook(patch, "-e", "patch_state=absent"))
    assert all(t.ask("compute 5") == "11" for t in ts)
    assert not changed(playbook(patch, "-e", "patch_state=absent"))


OTHER = Program("target.c", "-fPIE", "-pie", "-O1")          # a second service, another binary
OTHER_FIX = Patch("patch_target.c", OTHER)
SSHD_CONFIG = """ListenAddress 127.0.0.1
Port {port}
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile {dir}/sshd.pid
Subsystem sftp internal-sftp
"""


@pytest.fixture
def ssh_host(tmp_path):
    """A second "host": openssh-server on a loopback address with throwaway keys; its inventory line."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or shutil.which("ansible-playbook") is None:
        pytest.skip("openssh-server or ansible-core is not installed (.ci/run installs them)")
    d = tmp_path / "ssh"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "sshd_config").write_text(SSHD_CONFIG.format(port=port, dir=d))
    os.makedirs("/run/sshd", exist_ok=True)
    log = open(d / "sshd.log", "w")
    server = subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")], stderr=log, start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.05)
    yield (f"ansible_host=127.0.0.1 ansible_port={port} ansible_user=root "
           f"ansible_ssh_private_key_file={d / 'client_key'} "
           "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'")
    os.killpg(server.pid, signal.SIGTERM)   # sshd and the sessions it forked
    server.wait(timeout=30)
    log.close()


def test_two_hosts_one_over_ssh(build, spawn, tmp_path, ssh_host):
    """The playbook on two hosts at once: this one (local connection) and one reached over SSH, each with
    its own service and patch; check mode, apply, idempotent, absent."""
    here, there = spawn(build(TARGET)), spawn(build(OTHER))
    inventory = tmp_path / "inventory"
    inventory.write_text(f"here ansible_connection=local patch={build(FIX)}\n"
                         f"there {ssh_host} patch={build(OTHER_FIX)}\n")
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, "ansible"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "False", "PYTHONPATH": ROOT,
           "ANSIBLE_SSH_ARGS": "-o ControlMaster=no"}   # no master connection left behind

    def run(*extra) -> subprocess.CompletedProcess:
        return subprocess.run(["ansible-playbook", "-i", str(inventory), PLAYBOOK,
                               "-e", f"hotpatch_executable='env PYTHONPATH={ROOT} {sys.executable} -m hotpatch'",
                               "-e", f"ansible_python_interpreter={sys.executable}", *extra],
                              capture_output=True, text=True, env=env, timeout=300)

    def recap(r) -> dict[str, int]:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        lines = r.stdout[r.stdout.rindex("PLAY RECAP"):].splitlines()[1:]
        return {line.split()[0]: int(line.split("changed=")[1].split()[0]) for line in lines if "changed=" in line}

    assert recap(run("--check")) == {"here": 1, "there": 1}
    assert here.ask("compute 5") == "11" and there.ask("compute 5") != "51"
    assert recap(run()) == {"here": 1, "there": 1}
    assert here.ask("compute 5") == "51" and there.ask("compute 5") == "51"
    assert recap(run()) == {"here": 0, "there": 0}
    assert recap(run("-e", "patch_state=absent")) == {"here": 1, "there": 1}
    assert here.ask("compute 5") == "11" and there.ask("compute 5") == "11"
