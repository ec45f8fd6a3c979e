"""A live process: threads, registers, memory, mappings, remote syscalls."""
