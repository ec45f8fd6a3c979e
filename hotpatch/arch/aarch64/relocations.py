"""AArch64 ELF relocations (AAELF64, section 5.7), by r_type: what is linked, what is refused.

The GOT forms compute G(GDAT(S+A)): the slot holds S+A, so an addend would
need a slot of its own; the image has one slot per symbol and refuses one.
"""

from hotpatch.arch import reloc as R
from hotpatch.arch.aarch64.insn import ADR_BYTE, ADRP_PAGE, IMM14, IMM19, IMM26, lo12_field, page
from hotpatch.errors import RelocationError


def page_relative(s: int, a: int, p: int, g: int) -> int:
    """Page(S + A) - Page(P)"""
    return page(s + a) - page(p)


def _no_got_addend(a: int) -> None:
    if a:
        raise RelocationError(f"GOT relocation with addend {a}: only a symbol's own address has a slot")


def gdat_page_relative(s: int, a: int, p: int, g: int) -> int:
    """Page(G(GDAT(S + A))) - Page(P)"""
    _no_got_addend(a)
    return page(g) - page(p)


def gdat_absolute(s: int, a: int, p: int, g: int) -> int:
    """G(GDAT(S + A))"""
    _no_got_addend(a)
    return g


def gdat_pc_relative(s: int, a: int, p: int, g: int) -> int:
    """G(GDAT(S + A)) - P"""
    _no_got_addend(a)
    return g - p


def _nothing(buf: bytearray, offset: int, value: int) -> None:
    """R_AARCH64_TLSDESC_CALL marks the blr for a linker that relaxes; nothing is written."""


def _insn(name: str, compute: R.Compute, store: R.Store, **flags) -> R.RelocType:
    return R.RelocType(name, compute, store, 4, **flags)


TLS_WHY = ("this thread-local access model is not supported: a patch reaches the process's __thread "
           "variables through TLS descriptors, as -fPIC code does; its own must be globals or statics")
PIC_WHY = "absolute 32/16-bit address: build the patch with -fPIC (hotpatch build does)"
LARGE_WHY = "large code model: build without -mcmodel=large"
SMALL_PIC_WHY = "small GOT model (-fpic): build the patch with -fPIC"

RELOCATIONS: dict[int, R.RelocType] = {
    # data
    257: R.RelocType("R_AARCH64_ABS64", R.absolute, R.truncating_field(8), 8),
    258: R.unsupported("R_AARCH64_ABS32", PIC_WHY),
    259: R.unsupported("R_AARCH64_ABS16", PIC_WHY),
    260: R.RelocType("R_AARCH64_PREL64", R.pc_relative, R.int_field(8, True), 8),
    261: R.RelocType("R_AARCH64_PREL32", R.pc_relative, R.int_field(4, True), 4),
    262: R.RelocType("R_AARCH64_PREL16", R.pc_relative, R.int_field(2, True), 2),
    # addresses: adrp + add/ldr/str, adr, ldr literal
    273: _insn("R_AARCH64_LD_PREL_LO19", R.pc_relative, IMM19),
    274: _insn("R_AARCH64_ADR_PREL_LO21", R.pc_relative, ADR_BYTE),
    275: _insn("R_AARCH64_ADR_PREL_PG_HI21", page_relative, ADRP_PAGE),
    276: _insn("R_AARCH64_ADR_PREL_PG_HI21_NC", page_relative, ADRP_PAGE),   # checked anyway
    277: _insn("R_AARCH64_ADD_ABS_LO12_NC", R.absolute, lo12_field(0)),
    278: _insn("R_AARCH64_LDST8_ABS_LO12_NC", R.absolute, lo12_field(0)),
    284: _insn("R_AARCH64_LDST16_ABS_LO12_NC", R.absolute, lo12_field(1)),
    285: _insn("R_AARCH64_LDST32_ABS_LO12_NC", R.absolute, lo12_field(2)),
    286: _insn("R_AARCH64_LDST64_ABS_LO12_NC", R.absolute, lo12_field(3)),
    299: _insn("R_AARCH64_LDST128_ABS_LO12_NC", R.absolute, lo12_field(4)),
    # branches: b/bl reach ±128 MiB, else the linker routes calls through a veneer (stub)
    279: _insn("R_AARCH64_TSTBR14", R.pc_relative, IMM14),
    280: _insn("R_AARCH64_CONDBR19", R.pc_relative, IMM19),
    282: _insn("R_AARCH64_JUMP26", R.pc_relative, IMM26, is_call=True),
    283: _insn("R_AARCH64_CALL26", R.pc_relative, IMM26, is_call=True),
    # GOT slots in the image
    309: _insn("R_AARCH64_GOT_LD_PREL19", gdat_pc_relative, IMM19, needs_got=True),
    310: R.unsupported("R_AARCH64_LD64_GOTOFF_LO15", SMALL_PIC_WHY),
    311: _insn("R_AARCH64_ADR_GOT_PAGE", gdat_page_relative, ADRP_PAGE, needs_got=True),
    312: _insn("R_AARCH64_LD64_GOT_LO12_NC", gdat_absolute, lo12_field(3), needs_got=True),
    313: R.unsupported("R_AARCH64_LD64_GOTPAGE_LO15", SMALL_PIC_WHY),
    # large code model
    263: R.unsupported("R_AARCH64_MOVW_UABS_G0", LARGE_WHY),
    264: R.unsupported("R_AARCH64_MOVW_UABS_G0_NC", LARGE_WHY),
    265: R.unsupported("R_AARCH64_MOVW_UABS_G1", LARGE_WHY),
    266: R.unsupported("R_AARCH64_MOVW_UABS_G1_NC", LARGE_WHY),
    267: R.unsupported("R_AARCH64_MOVW_UABS_G2", LARGE_WHY),
    268: R.unsupported("R_AARCH64_MOVW_UABS_G2_NC", LARGE_WHY),
    269: R.unsupported("R_AARCH64_MOVW_UABS_G3", LARGE_WHY),
    270: R.unsupported("R_AARCH64_MOVW_SABS_G0", LARGE_WHY),
    271: R.unsupported("R_AARCH64_MOVW_SABS_G1", LARGE_WHY),
    272: R.unsupported("R_AARCH64_MOVW_SABS_G2", LARGE_WHY),
    287: R.unsupported("R_AARCH64_MOVW_PREL_G0", LARGE_WHY),
    288: R.unsupported("R_AARCH64_MOVW_PREL_G0_NC", LARGE_WHY),
    289: R.unsupported("R_AARCH64_MOVW_PREL_G1", LARGE_WHY),
    290: R.unsupported("R_AARCH64_MOVW_PREL_G1_NC", LARGE_WHY),
    291: R.unsupported("R_AARCH64_MOVW_PREL_G2", LARGE_WHY),
    292: R.unsupported("R_AARCH64_MOVW_PREL_G2_NC", LARGE_WHY),
    293: R.unsupported("R_AARCH64_MOVW_PREL_G3", LARGE_WHY),
    300: R.unsupported("R_AARCH64_MOVW_GOTOFF_G0", LARGE_WHY),
    301: R.unsupported("R_AARCH64_MOVW_GOTOFF_G0_NC", LARGE_WHY),
    302: R.unsupported("R_AARCH64_MOVW_GOTOFF_G1", LARGE_WHY),
    303: R.unsupported("R_AARCH64_MOVW_GOTOFF_G1_NC", LARGE_WHY),
    304: R.unsupported("R_AARCH64_MOVW_GOTOFF_G2", LARGE_WHY),
    305: R.unsupported("R_AARCH64_MOVW_GOTOFF_G2_NC", LARGE_WHY),
    306: R.unsupported("R_AARCH64_MOVW_GOTOFF_G3", LARGE_WHY),
    307: R.unsupported("R_AARCH64_GOTREL64", LARGE_WHY),
    308: R.unsupported("R_AARCH64_GOTREL32", LARGE_WHY),
    # thread-local storage: every model
    512: R.unsupported("R_AARCH64_TLSGD_ADR_PREL21", TLS_WHY),
    513: R.unsupported("R_AARCH64_TLSGD_ADR_PAGE21", TLS_WHY),
    514: R.unsupported("R_AARCH64_TLSGD_ADD_LO12_NC", TLS_WHY),
    515: R.unsupported("R_AARCH64_TLSGD_MOVW_G1", TLS_WHY),
    516: R.unsupported("R_AARCH64_TLSGD_MOVW_G0_NC", TLS_WHY),
    517: R.unsupported("R_AARCH64_TLSLD_ADR_PREL21", TLS_WHY),
    518: R.unsupported("R_AARCH64_TLSLD_ADR_PAGE21", TLS_WHY),
    519: R.unsupported("R_AARCH64_TLSLD_ADD_LO12_NC", TLS_WHY),
    520: R.unsupported("R_AARCH64_TLSLD_MOVW_G1", TLS_WHY),
    521: R.unsupported("R_AARCH64_TLSLD_MOVW_G0_NC", TLS_WHY),
    522: R.unsupported("R_AARCH64_TLSLD_LD_PREL19", TLS_WHY),
    523: R.unsupported("R_AARCH64_TLSLD_MOVW_DTPREL_G2", TLS_WHY),
    524: R.unsupported("R_AARCH64_TLSLD_MOVW_DTPREL_G1", TLS_WHY),
    525: R.unsupported("R_AARCH64_TLSLD_MOVW_DTPREL_G1_NC", TLS_WHY),
    526: R.unsupported("R_AARCH64_TLSLD_MOVW_DTPREL_G0", TLS_WHY),
    527: R.unsupported("R_AARCH64_TLSLD_MOVW_DTPREL_G0_NC", TLS_WHY),
    528: R.unsupported("R_AARCH64_TLSLD_ADD_DTPREL_HI12", TLS_WHY),
    529: R.unsupported("R_AARCH64_TLSLD_ADD_DTPREL_LO12", TLS_WHY),
    530: R.unsupported("R_AARCH64_TLSLD_ADD_DTPREL_LO12_NC", TLS_WHY),
    531: R.unsupported("R_AARCH64_TLSLD_LDST8_DTPREL_LO12", TLS_WHY),
    532: R.unsupported("R_AARCH64_TLSLD_LDST8_DTPREL_LO12_NC", TLS_WHY),
    533: R.unsupported("R_AARCH64_TLSLD_LDST16_DTPREL_LO12", TLS_WHY),
    534: R.unsupported("R_AARCH64_TLSLD_LDST16_DTPREL_LO12_NC", TLS_WHY),
    535: R.unsupported("R_AARCH64_TLSLD_LDST32_DTPREL_LO12", TLS_WHY),
    536: R.unsupported("R_AARCH64_TLSLD_LDST32_DTPREL_LO12_NC", TLS_WHY),
    537: R.unsupported("R_AARCH64_TLSLD_LDST64_DTPREL_LO12", TLS_WHY),
    538: R.unsupported("R_AARCH64_TLSLD_LDST64_DTPREL_LO12_NC", TLS_WHY),
    539: R.unsupported("R_AARCH64_TLSIE_MOVW_GOTTPREL_G1", TLS_WHY),
    540: R.unsupported("R_AARCH64_TLSIE_MOVW_GOTTPREL_G0_NC", TLS_WHY),
    541: R.unsupported("R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21", TLS_WHY),
    542: R.unsupported("R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC", TLS_WHY),
    543: R.unsupported("R_AARCH64_TLSIE_LD_GOTTPREL_PREL19", TLS_WHY),
    544: R.unsupported("R_AARCH64_TLSLE_MOVW_TPREL_G2", TLS_WHY),
    545: R.unsupported("R_AARCH64_TLSLE_MOVW_TPREL_G1", TLS_WHY),
    546: R.unsupported("R_AARCH64_TLSLE_MOVW_TPREL_G1_NC", TLS_WHY),
    547: R.unsupported("R_AARCH64_TLSLE_MOVW_TPREL_G0", TLS_WHY),
    548: R.unsupported("R_AARCH64_TLSLE_MOVW_TPREL_G0_NC", TLS_WHY),
    549: R.unsupported("R_AARCH64_TLSLE_ADD_TPREL_HI12", TLS_WHY),
    550: R.unsupported("R_AARCH64_TLSLE_ADD_TPREL_LO12", TLS_WHY),
    551: R.unsupported("R_AARCH64_TLSLE_ADD_TPREL_LO12_NC", TLS_WHY),
    552: R.unsupported("R_AARCH64_TLSLE_LDST8_TPREL_LO12", TLS_WHY),
    553: R.unsupported("R_AARCH64_TLSLE_LDST8_TPREL_LO12_NC", TLS_WHY),
    554: R.unsupported("R_AARCH64_TLSLE_LDST16_TPREL_LO12", TLS_WHY),
    555: R.unsupported("R_AARCH64_TLSLE_LDST16_TPREL_LO12_NC", TLS_WHY),
    556: R.unsupported("R_AARCH64_TLSLE_LDST32_TPREL_LO12", TLS_WHY),
    557: R.unsupported("R_AARCH64_TLSLE_LDST32_TPREL_LO12_NC", TLS_WHY),
    558: R.unsupported("R_AARCH64_TLSLE_LDST64_TPREL_LO12", TLS_WHY),
    559: R.unsupported("R_AARCH64_TLSLE_LDST64_TPREL_LO12_NC", TLS_WHY),
    560: R.unsupported("R_AARCH64_TLSDESC_LD_PREL19", TLS_WHY),
    561: R.unsupported("R_AARCH64_TLSDESC_ADR_PREL21", TLS_WHY),
    # TLS descriptors (the default dialect): the descriptor {entry, argument} lives in the image, filled
    # with the loader's own descriptor of the variable, or for static TLS the image's own entry
    562: _insn("R_AARCH64_TLSDESC_ADR_PAGE21", gdat_page_relative, ADRP_PAGE, tls_index=True),
    563: _insn("R_AARCH64_TLSDESC_LD64_LO12", gdat_absolute, lo12_field(3), tls_index=True),
    564: _insn("R_AARCH64_TLSDESC_ADD_LO12", gdat_absolute, lo12_field(0), tls_index=True),
    565: R.unsupported("R_AARCH64_TLSDESC_OFF_G1", TLS_WHY),
    566: R.unsupported("R_AARCH64_TLSDESC_OFF_G0_NC", TLS_WHY),
    567: R.unsupported("R_AARCH64_TLSDESC_LDR", TLS_WHY),
    568: R.unsupported("R_AARCH64_TLSDESC_ADD", TLS_WHY),
    569: _insn("R_AARCH64_TLSDESC_CALL", gdat_absolute, _nothing, tls_index=True),
    570: R.unsupported("R_AARCH64_TLSLE_LDST128_TPREL_LO12", TLS_WHY),
    571: R.unsupported("R_AARCH64_TLSLE_LDST128_TPREL_LO12_NC", TLS_WHY),
    572: R.unsupported("R_AARCH64_TLSLD_LDST128_DTPREL_LO12", TLS_WHY),
    573: R.unsupported("R_AARCH64_TLSLD_LDST128_DTPREL_LO12_NC", TLS_WHY),
}

R_AARCH64_GLOB_DAT, R_AARCH64_JUMP_SLOT = 1025, 1026
GOT_RELOC_TYPES = frozenset({R_AARCH64_GLOB_DAT, R_AARCH64_JUMP_SLOT})
DTPMOD_RELOC_TYPES = frozenset({1028})   # the loader writes a module's TLS id there
TLSDESC_RELOC_TYPES = frozenset({1031})   # the loader fills a {entry, argument} descriptor there
