"""The slots where a binary's own IFUNC calls land: each IRELATIVE relocation (R_X86_64_IRELATIVE,
R_AARCH64_IRELATIVE) names a resolver by its addend and a GOT slot by its offset. At startup the loader
(or, in a static binary, its start code) calls the resolver once and stores the implementation it chose in
the slot; reading the slot later gives that choice without running anything in the process.
"""

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from hotpatch.errors import ELFFormatError

IRELATIVE = {"EM_X86_64": 37, "EM_AARCH64": 1032}
MAX_RELOCATIONS = 1 << 20


def irelative_slots(path: str) -> dict[int, int]:
    """{resolver address: slot address} (link-time addresses) of the binary's IRELATIVE relocations."""
    out: dict[int, int] = {}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            kind = IRELATIVE.get(elf.header["e_machine"])
            if kind is None:
                return out
            for sec in elf.iter_sections():
                if not isinstance(sec, RelocationSection) or not sec.is_RELA():
                    continue
                if sec.num_relocations() > MAX_RELOCATIONS:
                    raise ELFFormatError(f"{path}: section {sec.name} has {sec.num_relocations()} relocations")
                for r in sec.iter_relocations():
                    if r["r_info_type"] == kind:
                        out.setdefault(r["r_addend"], r["r_offset"])
    except (ELFError, OSError, ValueError) as e:
        raise ELFFormatError(f"cannot read the relocations of {path}: {e}") from e
    return out
