"""Fixtures over tests/harness.py, and the rules of tests/live.

Every live scenario (tests/live/test_*.py, one scenario a file) says at module level
where it runs: `pytestmark = pytest.mark.arm64` (here and in the ARM64 guest, which
runs it on files cross-built by tests/arm64/prepare.py), or
`pytestmark = harness.host_only("why")` (skipped where programs are prebuilt).
"""

import os

import harness
import pytest

LIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "live")


def pytest_configure(config):
    config.addinivalue_line("markers", "arm64: live scenario also run in the ARM64 guest (.ci/arm64); "
                                       "tests/arm64/prepare.py cross-builds the programs and patches it declares")
    config.addinivalue_line("markers", "host_only(reason): live scenario that cannot run on prebuilt files")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not str(item.fspath).startswith(LIVE + os.sep):
            continue
        marks = {m.name for m in item.iter_markers()}
        if not marks & {"arm64", "host_only"}:
            raise pytest.UsageError(f"{item.nodeid}: a live scenario is marked arm64 or host_only(reason)")


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    """build(Program(...)) or build(Patch(...)) -> path of the file."""
    try:
        builder = harness.Builder(str(tmp_path_factory.mktemp("fixtures")), prebuilt=harness.PREBUILT)
    except harness.MissingPrebuilt as e:
        pytest.fail(str(e), pytrace=False)

    def get(spec):
        try:
            return builder(spec)
        except harness.MissingPrebuilt as e:
            pytest.fail(str(e), pytrace=False)
    return get


@pytest.fixture
def spawn():
    """spawn(argv, ready_prefix="ready") -> harness.Target, stopped after the test."""
    with harness.Targets() as start:
        yield start


@pytest.fixture
def v2_group(request):
    """A cgroup v2 group of its own (skipped without a writable hierarchy); thawed, emptied and removed after."""
    from hotpatch.process.cgroup import cgroup2_mount
    mount = cgroup2_mount()
    if mount is None or not os.access(mount, os.W_OK):
        pytest.skip("no writable cgroup v2 hierarchy here")
    group = os.path.join(mount, f"hotpatch-test-{os.getpid()}-{request.node.name[-20:]}")
    os.mkdir(group)
    yield group
    harness.write(os.path.join(group, "cgroup.freeze"), "0")
    for pid in open(os.path.join(group, "cgroup.procs")).read().split():
        harness.write(os.path.join(mount, "cgroup.procs"), pid)
    os.rmdir(group)
