"""Per-architecture code behind one interface (base.Arch), chosen from one table.

The architecture is a value taken from an ELF header (e_machine) or a patch's
metadata (its name), never from the host.
"""

from hotpatch.arch.base import Arch
from hotpatch.errors import UnsupportedArch


def _x86_64() -> type[Arch]:
    from hotpatch.arch.x86_64 import X86_64
    return X86_64


def _aarch64() -> type[Arch]:
    from hotpatch.arch.aarch64 import AArch64
    return AArch64


# e_machine: (name, loader); loaded on demand so that one architecture's
# dependencies (capstone for x86-64 padding) are not imported for the other.
ARCHITECTURES = {62: ("x86_64", _x86_64), 183: ("aarch64", _aarch64)}
SUPPORTED = ", ".join(name for name, _ in ARCHITECTURES.values())


def arch_for_machine(e_machine: int) -> Arch:
    entry = ARCHITECTURES.get(e_machine)
    if entry is None:
        raise UnsupportedArch(f"ELF machine {e_machine} is not supported", f"{SUPPORTED} are")
    return entry[1]()()


def get_arch(name: str) -> Arch:
    for machine, (known, _) in ARCHITECTURES.items():
        if known == name:
            return arch_for_machine(machine)
    raise UnsupportedArch(f"architecture {name} is not supported", f"{SUPPORTED} are")
