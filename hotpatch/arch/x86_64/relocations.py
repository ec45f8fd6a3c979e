"""x86-64 ELF relocations (System V psABI, table 4.10), by r_type: what is linked, what is refused."""

from hotpatch.arch import reloc as R

TLS_WHY = ("this thread-local access model is not supported: a patch reaches the process's __thread "
           "variables the way -fPIC code does (general dynamic); its own must be globals or statics")
LARGE_WHY = "large code model: build without -mcmodel=large"

RELOCATIONS: dict[int, R.RelocType] = {
    1: R.RelocType("R_X86_64_64", R.absolute, R.truncating_field(8), 8),
    2: R.RelocType("R_X86_64_PC32", R.pc_relative, R.int_field(4, True), 4),
    4: R.RelocType("R_X86_64_PLT32", R.pc_relative, R.int_field(4, True), 4, is_call=True),
    9: R.RelocType("R_X86_64_GOTPCREL", R.got_pc_relative, R.int_field(4, True), 4, needs_got=True),
    # Non-PIC code (a non-PIE program's own objects, as build --diff compiles them): linked when the image
    # is mapped in the low 2 GiB, as the program itself is; hotpatch build's -fPIC never emits them.
    10: R.RelocType("R_X86_64_32", R.absolute, R.int_field(4, False), 4, low=True),
    11: R.RelocType("R_X86_64_32S", R.absolute, R.int_field(4, True), 4, low=True),
    # General dynamic: lea x@tlsgd(%rip),%rdi; call __tls_get_addr: the pair lives in the image, filled
    # with the module id and offset of the process's variable (live/tls.py)
    19: R.RelocType("R_X86_64_TLSGD", R.got_pc_relative, R.int_field(4, True), 4, tls_index=True),
    20: R.unsupported("R_X86_64_TLSLD", TLS_WHY),
    21: R.unsupported("R_X86_64_DTPOFF32", TLS_WHY),
    22: R.unsupported("R_X86_64_GOTTPOFF", TLS_WHY),
    23: R.unsupported("R_X86_64_TPOFF32", TLS_WHY),
    24: R.RelocType("R_X86_64_PC64", R.pc_relative, R.int_field(8, True), 8),
    26: R.unsupported("R_X86_64_GOTPC32", LARGE_WHY),
    27: R.unsupported("R_X86_64_GOT64", LARGE_WHY),
    29: R.unsupported("R_X86_64_GOTPC64", LARGE_WHY),
    41: R.RelocType("R_X86_64_GOTPCRELX", R.got_pc_relative, R.int_field(4, True), 4, needs_got=True),
    42: R.RelocType("R_X86_64_REX_GOTPCRELX", R.got_pc_relative, R.int_field(4, True), 4, needs_got=True),
}

R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT = 6, 7
GOT_RELOC_TYPES = frozenset({R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT})
DTPMOD_RELOC_TYPES = frozenset({16})   # the loader writes a module's TLS id there
TLSDESC_RELOC_TYPES: frozenset[int] = frozenset()   # patches use general dynamic (tls_index pairs)
