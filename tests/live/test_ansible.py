"""The Ansible collection, run for real: ansible-playbook (ansible-core from PyPI) on this machine over a
local connection applies a patch to every process of its binary, a second run changes nothing, check mode
changes nothing, state=absent reverts it; the facts module reports it."""

import os
import shutil
import subprocess
import sys

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
