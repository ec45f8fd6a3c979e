"""Reading ELF files and images: pure code, no live process."""
