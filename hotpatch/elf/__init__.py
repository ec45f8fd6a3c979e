"""Reading ELF files and images: pure code, no live process."""


class ELFFormatError(ValueError):
    """The bytes are not an ELF object of a kind hotpatch understands."""
