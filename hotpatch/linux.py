"""Linux ABI constants shared by every layer (asm-generic values: the same on x86-64 and aarch64)."""

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
PR_SET_VMA, PR_SET_VMA_ANON_NAME = 0x53564D41, 0
EEXIST = 17
NO_FD = (1 << 64) - 1   # mmap's fd argument for an anonymous mapping (-1)
