#!/usr/bin/env python3
"""Cross-build, on this host, what the live scenarios marked arm64 need (the ARM64 guest has no compiler).

    python3 tests/arm64/prepare.py      # -> build/arm64/ and its manifest.json; .ci/arm64 then runs tests/live

Each tests/live/test_*.py is imported as the guest will import it (harness.ARCH = "aarch64"); the
Program and Patch specs that a module marked arm64 declares are built with the AArch64 cross compiler
(`hotpatch build` picks it from the binary's architecture) by the harness's Builder, whose manifest
the harness reads in the guest. Nothing else is built: a scenario that needs more fails there, saying so.
"""

import glob
import importlib.util
import os
import shutil
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]   # the harness, and this checkout's hotpatch
import harness  # noqa: E402

OUT = os.path.join(harness.ROOT, "build", "arm64")
ARCH = "aarch64"


def marked_arm64(module) -> bool:
    marks = module.__dict__.get("pytestmark", [])
    return any(getattr(m, "name", None) == "arm64" for m in (marks if isinstance(marks, list) else [marks]))


def arm64_specs(live_dir: str = os.path.join(TESTS, "live")) -> tuple[list, list[str]]:
    """(the specs the arm64 scenarios declare, their files), each spec once."""
    harness.ARCH = ARCH   # module-level declarations see the guest's architecture
    specs, files = {}, []
    for path in sorted(glob.glob(os.path.join(live_dir, "test_*.py"))):
        before = len(harness.SPECS)
        name = "arm64_prepare_" + os.path.splitext(os.path.basename(path))[0]
        loader = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        if marked_arm64(module):
            files.append(os.path.relpath(path, harness.ROOT))
            for spec in harness.SPECS[before:]:
                specs.setdefault(spec.key, spec)
    return list(specs.values()), files


def main() -> None:
    specs, files = arm64_specs()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    builder = harness.Builder(OUT, arch=ARCH)
    for spec in specs:
        builder(spec)
    builder.write_manifest()
    programs = sum(isinstance(s, (harness.Program, harness.Project)) for s in specs)
    print(f"{programs} programs and {len(specs) - programs} patches for {len(files)} arm64 scenarios in {OUT}")


if __name__ == "__main__":
    main()
