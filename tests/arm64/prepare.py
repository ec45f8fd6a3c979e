#!/usr/bin/env python3
"""Cross-build the ARM64 live suite's fixtures and patches on the host (the guest has no compiler).

    python3 tests/arm64/prepare.py      # -> build/arm64/, then run tests/arm64 in the guest
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "build", "arm64")
CC = os.environ.get("ARM64_CC", "aarch64-linux-gnu-gcc")

PROGRAMS = {   # name: (source, flags)
    "target": ("target.c", ["-fPIE", "-pie"]),
    "target-pac": ("target.c", ["-fPIE", "-pie", "-mbranch-protection=standard"]),
    "busy": ("busy.c", ["-fPIE", "-pie"]),
    "blocking": ("blocking.c", ["-fPIE", "-pie"]),
    "signals": ("signals.c", ["-fPIE", "-pie"]),
}
PATCHES = {   # output: (patch source, program, extra build args)
    "target.hp": ("patch_target.c", "target", []),
    "target-pac.hp": ("patch_target.c", "target-pac", ["--cflags", "-mbranch-protection=standard"]),
    "busy.hp": ("patch_work.c", "busy", []),
    "blocking.hp": ("patch_work.c", "blocking", []),
    "signals.hp": ("patch_work.c", "signals", []),
    "far.hp": ("patch_far.c", "target", []),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (source, flags) in PROGRAMS.items():
        subprocess.run([CC, "-O2", "-g", "-pthread", *flags, "-o", os.path.join(OUT, name),
                        os.path.join(ROOT, "fixtures", source)], check=True)
    for out, (source, program, extra) in PATCHES.items():
        src = os.path.join(ROOT, "fixtures", source)
        # No CC: `hotpatch build` must pick the cross compiler from the target's architecture.
        env = {k: v for k, v in os.environ.items() if k != "CC"}
        subprocess.run([sys.executable, "-m", "hotpatch", "build", src, "--target", os.path.join(OUT, program),
                        "-o", os.path.join(OUT, out), *extra], check=True, cwd=ROOT, env=env)
    print(f"ARM64 fixtures and patches in {OUT}")


if __name__ == "__main__":
    main()
