"""Usage errors get exit 2 and one line; --version and -h answer."""

from harness import hotpatch


def one_line(r):
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("hotpatch: "), r.stderr
    return r.stderr


def test_usage_errors():
    r = hotpatch()
    assert r.returncode == 2 and "usage" in (r.stdout + r.stderr).lower()
    r = hotpatch("frobnicate")
    assert r.returncode == 2
    one_line(r)
    r = hotpatch("apply", "notapid", "x.hp")
    assert r.returncode == 2
    one_line(r)
    r = hotpatch("--version")
    assert r.returncode == 0 and r.stdout.startswith("hotpatch ")
    r = hotpatch("-h")
    assert r.returncode == 0 and "exit codes:" in r.stdout and "process busy" in r.stdout
