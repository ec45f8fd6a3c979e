"""Reading a section's bytes with pyelftools, bounded: the files come from processes, which may be hostile.

A process can map any file as a "library", a sparse one of many GiB whose
section headers claim as much (or a compressed section that inflates so):
reading it whole once took a root apply to 8.4 GB. No section larger than
MAX_SECTION_SIZE (stored or inflated) is read; the largest real ones
(.symtab of a browser's debug file) are a fraction of it.
"""

from hotpatch.errors import ELFFormatError

MAX_SECTION_SIZE = 256 << 20


def check_size(section, path: str) -> None:
    size = max(section["sh_size"], getattr(section, "data_size", 0) or 0)
    if size > MAX_SECTION_SIZE:
        raise ELFFormatError(f"{section.name} of {path} claims {size} bytes, more than hotpatch reads "
                             f"({MAX_SECTION_SIZE >> 20} MiB)")


def section_data(section, path: str) -> bytes:
    """The section's bytes (inflated if compressed), if it is not larger than MAX_SECTION_SIZE."""
    check_size(section, path)
    return section.data()
