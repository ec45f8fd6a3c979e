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
    raise InvalidPatch(f"architecture {name} is not supported yet", "x86_64 is supported")
