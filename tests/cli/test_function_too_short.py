"""Packed functions (no alignment padding after them) leave no room for a 5-byte x86-64 jump:
build refuses with exit 6 and writes nothing."""

import pytest
from harness import compile_c, compiler_for, hotpatch

CC = compiler_for("x86_64")


@pytest.mark.skipif(CC is None, reason="no x86-64 C compiler here")
def test_function_too_short_refused(tmp_path):
    src = tmp_path / "tiny.c"
    src.write_text("__attribute__((noinline)) int work(int x) { return x + 1; }\n"
                   "__attribute__((noinline)) int next(int x) { return x + 2; }\n"
                   "int main(int argc, char **argv) { return work(argc) + next(argc); }\n")
    binary = compile_c(str(tmp_path / "tiny"), [str(src)], ["-falign-functions=1"], CC)
    patch = tmp_path / "p.c"
    patch.write_text("int work(int x) { return x + 3; }\n")
    r = hotpatch("build", str(patch), "--target", binary, "-o", str(tmp_path / "p.hp"))
    assert r.returncode == 6, r.stderr
    assert "work is 4 bytes, too short for a 5-byte jump" in r.stderr
    assert not (tmp_path / "p.hp").exists()
