"""An unprivileged user against another user's process: exit 5 with the reason, nothing touched."""

import os
import shutil
import sys
import tempfile

import pytest
from harness import Patch, Program

import hotpatch.ops.apply  # noqa: F401  (imported before dropping privileges: the
import hotpatch.patchfile  # noqa: F401   interpreter's own files may be root-only)
from hotpatch.cli import main

pytestmark = pytest.mark.arm64

TARGET = Program("target.c", "-fPIE", "-pie")
FIX = Patch("patch_target.c", TARGET)


def run_as_nobody(argv):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(w, 2)
            sys.stderr = os.fdopen(2, "w", buffering=1)   # pytest had replaced it
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = main(argv)
        except BaseException:
            code = 99
        sys.stderr.flush()
        os._exit(code)
    os.close(w)
    err = b""
    while chunk := os.read(r, 4096):
        err += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err.decode()


def test_non_root_refused(build, spawn):
    binary = build(TARGET)
    shared = tempfile.mkdtemp(prefix="hotpatch-perm-")
    try:
        os.chmod(shared, 0o755)
        patch = shutil.copy(build(FIX), shared)
        os.chmod(patch, 0o644)
        t = spawn(binary)
        maps = t.maps()
        code, err = run_as_nobody([str(t.pid), patch])
        assert code == 5, err
        assert err.count("\n") == 1 and ("permission" in err or "EPERM" in err), err
        assert "root" in err or "owner" in err or "ptrace_scope" in err
        assert t.maps() == maps
        assert t.ask("compute 5") == "11"
        code, err = run_as_nobody(["list", str(t.pid)])
        assert code == 5, err
        assert err.count("\n") == 1 and err.startswith("hotpatch: "), err
    finally:
        shutil.rmtree(shared)
