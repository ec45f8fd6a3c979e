"""Inputs that once hung or lied: a FIFO as the patch file, timeouts that are not a finite number of
seconds, a kernel thread's PID, and an output that is closed or full after the result happened."""

import os
import subprocess
import sys

import pytest
from harness import ROOT, Patch, Program, hotpatch

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def test_fifo_patch_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fix.hp"
    os.mkfifo(fifo)
    for args in (["info", str(fifo)], [str(os.getpid()), str(fifo)]):
        r = hotpatch(*args, timeout=10)              # once: blocked forever in open()
        assert r.returncode == 6 and "not a regular file" in r.stderr, r.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "1e308", "-1", "0", "ten"])
def test_timeout_must_be_finite_and_in_range(value):
    r = hotpatch("apply", "1", "x.hp", "--timeout", value)
    assert r.returncode == 2 and "--timeout" in r.stderr, r.stderr
    assert "\n" not in r.stderr.strip()


def test_kernel_thread_is_no_process():
    with open("/proc/2/status") as f:
        if "VmSize" in f.read():
            pytest.skip("PID 2 is not a kernel thread here")
    r = hotpatch("list", "2")
    assert r.returncode == 5 and "kernel thread" in r.stderr, r.stderr


@pytest.mark.parametrize("as_json", [False, True])
def test_full_or_closed_output_is_no_failure(build, as_json):
    patch = build(FIX)
    extra = ["--json"] if as_json else []
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "hotpatch", "info", patch, *extra], stdout=full,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr and r.stderr == "", r.stderr
    p = subprocess.Popen([sys.executable, "-m", "hotpatch", "info", patch, *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT)
    p.stdout.close()                                  # `| head -0`: nobody reads the result
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
