"""A thread sleeping inside the function to replace: exit 3 within the deadline, target unharmed."""

import subprocess
import time

from conftest import hotpatch


def test_busy_thread_refused(cc, spawn):
    binary = cc.program("busy.c", "-fPIE", "-pie")
    patch = cc.patch("patch_work.c", binary)
    t = spawn(binary)
    entry = t.symbol_address(binary, "work")
    before_code = t.read_mem(entry, 32)
    before_maps = t.maps()
    assert t.ask("work 1") == "2"

    start = time.monotonic()
    r = hotpatch(str(t.pid), patch, "--timeout", "1")
    elapsed = time.monotonic() - start
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert elapsed < 6, elapsed
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "work" in line and "will return into" in line and "--timeout" in line

    assert t.read_mem(entry, 32) == before_code
    assert t.maps() == before_maps            # the image was unmapped again
    assert t.ask("work 1") == "2"             # still serving, old code
    assert t.alive()
    with open(f"/proc/{t.pid}/status") as f:
        assert "TracerPid:\t0" in f.read()


def test_function_too_short_refused(tmp_path):
    """Packed functions (no alignment padding after them) leave no room for a 5-byte jump."""
    src = tmp_path / "tiny.c"
    src.write_text("__attribute__((noinline)) int work(int x) { return x + 1; }\n"
                   "__attribute__((noinline)) int next(int x) { return x + 2; }\n"
                   "int main(int argc, char **argv) { return work(argc) + next(argc); }\n")
    binary = str(tmp_path / "tiny")
    subprocess.run(["gcc", "-O2", "-falign-functions=1", "-o", binary, str(src)], check=True)
    patch = tmp_path / "p.c"
    patch.write_text("int work(int x) { return x + 3; }\n")
    r = hotpatch("build", str(patch), "--target", binary, "-o", str(tmp_path / "p.hp"))
    assert r.returncode == 6, r.stderr
    assert "work is 4 bytes, too short for a 5-byte jump" in r.stderr
    assert not (tmp_path / "p.hp").exists()
