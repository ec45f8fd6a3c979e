"""A patch calling functions glibc implements as IFUNCs (strlen, strcasecmp) binds to the implementation the
process's loader or start code chose: in a dynamic program through the slot of a module that imports it,
or, when none does, as hotpatch's own loader chose it in the same libc (same build-id, same machine); in a
static and a static-pie program through the binary's own IRELATIVE slot (the resolver is never run in the
process). Refused before: "is an IFUNC resolver in the binary; patches cannot call it directly"."""

import pytest
from harness import Patch, Program, hotpatch

pytestmark = pytest.mark.arm64

# The dynamic program never calls strcasecmp, so no module imports it: the loader's choice is had from
# hotpatch's own copy of the same libc (same build-id), where dlsym() gives it.
BUILDS = {"dynamic": Program("measure.c"), "static": Program("measure.c", "-static", "-DKEEP_STRCASECMP"),
          "static-pie": Program("measure.c", "-static-pie", "-DKEEP_STRCASECMP")}
FIXES = {kind: Patch("patch_measure.c", program) for kind, program in BUILDS.items()}


@pytest.mark.parametrize("kind", sorted(BUILDS))
def test_ifunc_calls_from_a_patch(build, spawn, kind):
    t = spawn(build(BUILDS[kind]))
    assert t.ask("len abcd") == "4" and t.ask("same Ab ab") == "0"
    r = hotpatch(str(t.pid), build(FIXES[kind]))
    assert r.returncode == 0, r.stderr
    assert t.ask("len abcd") == "40" and t.ask("len ") == "0"
    assert t.ask("same Ab ab") == "1" and t.ask("same Ab ac") == "0"
    assert hotpatch("revert", str(t.pid)).returncode == 0
    assert t.ask("len abcd") == "4"
