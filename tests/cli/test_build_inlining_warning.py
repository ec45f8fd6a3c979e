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
