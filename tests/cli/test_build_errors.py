"""hotpatch build refuses bad patch sources with exit 6 and one line (compile errors keep the
compiler's own output above it), writes nothing, and refuses a missing binary with exit 2."""

import os

import pytest
from harness import Program, hotpatch

TARGET = Program("target.c", "-fPIE", "-pie")


def one_line(r):
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("hotpatch: "), r.stderr
    return r.stderr


@pytest.mark.parametrize("source, expected", [
    ("extern int no_such_thing(int);\nint compute(int x) { return no_such_thing(x); }\n",
     "no_such_thing is defined neither in"),
    ("__thread int tls_var;\nint compute(int x) { return tls_var += x; }\n", "thread-local"),
    ("int unrelated(int x) { return x; }\n", "replaces no function"),
])
def test_refused_sources(build, tmp_path, source, expected):
    out = str(tmp_path / "x.hp")
    src = tmp_path / "bad.c"
    src.write_text(source)
    r = hotpatch("build", str(src), "--target", build(TARGET), "-o", out)
    assert r.returncode == 6 and expected in one_line(r)
    assert not os.path.exists(out)


def test_compile_error(build, tmp_path):
    out = str(tmp_path / "x.hp")
    src = tmp_path / "broken.c"
    src.write_text("int compute(int x) { return x +; }\n")
    r = hotpatch("build", str(src), "--target", build(TARGET), "-o", out)
    assert r.returncode == 6 and "error" in r.stderr and "compiling" in r.stderr.splitlines()[-1]
    assert not os.path.exists(out)


def test_missing_binary(tmp_path):
    src = tmp_path / "fix.c"
    src.write_text("int compute(int x) { return x; }\n")
    r = hotpatch("build", str(src), "--target", "/nonexistent", "-o", str(tmp_path / "x.hp"))
    assert r.returncode == 2
    one_line(r)
