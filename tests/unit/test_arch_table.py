"""One table picks the architecture, from an ELF e_machine or a name; never from the host."""

import pytest

from hotpatch.arch import arch_for_machine, get_arch
from hotpatch.errors import EXIT_INVALID, UnsupportedArch


@pytest.mark.parametrize("name, e_machine, audit_arch", [("x86_64", 62, 0xC000003E), ("aarch64", 183, 0xC00000B7)])
def test_both_architectures_by_name_and_machine(name, e_machine, audit_arch):
    arch = get_arch(name)
    assert (arch.name, arch.e_machine, arch.audit_arch) == (name, e_machine, audit_arch)
    assert type(arch_for_machine(e_machine)) is type(arch)
    assert arch.cross_compiler == f"{name}-linux-gnu-gcc"


def test_unsupported_architectures_refused():
    with pytest.raises(UnsupportedArch, match="riscv64") as e:
        get_arch("riscv64")
    assert e.value.exit_code == EXIT_INVALID
    with pytest.raises(UnsupportedArch, match="243"):
        arch_for_machine(243)
