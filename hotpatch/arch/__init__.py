"""Per-architecture code behind one shape: registers, syscall ABI, branches, relocations.

The architecture is a value chosen from the target's ELF header, never from the
host, so both are testable anywhere.
"""

from hotpatch.arch.base import Arch
from hotpatch.errors import InvalidPatch


def get_arch(name: str) -> Arch:
    if name == "x86_64":
        from hotpatch.arch.x86_64 import X86_64
        return X86_64()
    if name == "aarch64":
        from hotpatch.arch.aarch64 import AArch64
        return AArch64()
    raise InvalidPatch(f"architecture {name} is not supported", "x86_64 and aarch64 are")
