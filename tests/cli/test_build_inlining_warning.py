"""A hand-written patch for an optimised binary built without -flive-patching: build says that callers
may have inlined or specialised the replaced function, and points to `build --diff`; with
-flive-patching=inline-clone (or without optimisation) it says nothing."""

import pytest
from harness import Program, hotpatch

PATCH = "int compute(int x) { return x * 3; }\n"


@pytest.mark.parametrize("flags, warned", [(("-O2",), True), (("-O2", "-flive-patching=inline-clone"), False),
                                           (("-O0",), False)])
def test_inlining_warning(build, tmp_path, flags, warned):
    binary = build(Program("target.c", *flags))
    src = tmp_path / "fix.c"
    src.write_text(PATCH)
    r = hotpatch("build", str(src), "--target", binary, "-o", str(tmp_path / "fix.hp"))
    assert r.returncode == 0, r.stderr
    said = "optimised without -flive-patching: callers of compute may have inlined" in r.stderr
    assert said == warned, r.stderr
    assert ("build --diff" in r.stderr) == warned


CALLING_OUT = ("#include <stdio.h>\nconst char *version(void) { static char b[16]; "
               "snprintf(b, sizeof b, \"v%d\", 2); return b; }\n")


@pytest.mark.parametrize("flags, warned", [(("-O2",), True), (("-O2", "-fno-ipa-ra"), False)])
def test_new_version_clobbering_more(build, tmp_path, flags, warned):
    """version() is a leaf (it writes only rax); a new version that calls snprintf writes every
    caller-saved register: with -fipa-ra its callers may keep values there, and build says so."""
    binary = build(Program("target.c", *flags))
    src = tmp_path / "fix.c"
    src.write_text(CALLING_OUT)
    r = hotpatch("build", str(src), "--target", binary, "-o", str(tmp_path / "fix.hp"))
    assert r.returncode == 0, r.stderr
    said = "version: the new version writes" in r.stderr and "(it calls out)" in r.stderr
    assert said == warned, r.stderr
