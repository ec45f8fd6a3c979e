"""CallFrameTable (hotpatch/elf/cfi.py) against binutils: every row `readelf -wF` decodes, looked up at
its first and last address, must be the same rule. On libc and libstdc++ of both architectures
(DW_CFA_GNU_args_size, remember/restore_state, expressions, PAC), on programs compiled here, through
.eh_frame_hdr's table, an index of .eh_frame, a bare .eh_frame, a memory image, and .debug_frame
(compressed too) from a debug file."""

import os
import re
import shutil
import subprocess

import pytest

from hotpatch.elf import cfi
from hotpatch.elf.cfi import (
    EXPRESSION,
    OFFSET,
    REGISTER,
    SAME_VALUE,
    UNDEFINED,
    VAL_EXPRESSION,
    VAL_OFFSET,
    CallFrameTable,
    decode_pointer,
)
from hotpatch.errors import ELFFormatError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "fixtures")

X86_NAMES = {n: i for i, n in enumerate("rax rdx rcx rbx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15".split())}
A64_NAMES = {f"x{i}": i for i in range(31)} | {"sp": 31} | {f"v{i}": 64 + i for i in range(32)}

LIBRARIES = {   # libc (with DW_CFA_GNU_args_size on x86-64) and ld.so are always there; libstdc++ when installed
    "x86_64": ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"],
    "aarch64": ["/usr/aarch64-linux-gnu/lib/libc.so.6", "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1"],
}
OPTIONAL = {"x86_64": "/lib/x86_64-linux-gnu/libstdc++.so.6", "aarch64": "/usr/aarch64-linux-gnu/lib/libstdc++.so.6"}
COMPILERS = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc"}


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (the tests need binutils and the aarch64 cross compiler)")


def readelf_rows(path: str, section: str = ".eh_frame") -> list[tuple[int, int, int, dict]]:
    """(fde start, fde end, row address, {column: text}) for every row readelf -wF decodes in `section`;
    the return address column is in the dict as "ra=" (from the FDE's CIE). An FDE that only inherits
    its CIE's initial row (readelf prints none) gets that row."""
    need("readelf")
    # readelf exits 1 on libraries whose .gnu_debuglink it cannot follow, after decoding the frames
    out = subprocess.run(["readelf", "-wF", path], capture_output=True, text=True).stdout
    rows: list = []
    cies: dict[int, tuple[int, dict]] = {}   # offset: (return address column, initial row)
    current = columns = fde = cie = None
    fde_rows = 0

    def close_fde():
        if fde is not None and fde_rows == 0 and cies[fde[3]][1]:
            rows.append((fde[0], fde[1], fde[0], dict(cies[fde[3]][1], **{"ra=": fde[2]})))

    for line in out.splitlines() + ["Contents of the end section"]:
        m = re.match(r"Contents of the (\S+) section", line)
        if m:
            if current == section:
                close_fde()
            current, fde, cie = m.group(1), None, None
            continue
        if current != section:
            continue
        m = re.match(r"[0-9a-f]+ [0-9a-f]+ [0-9a-f]+ FDE cie=([0-9a-f]+) pc=([0-9a-f]+)\.\.([0-9a-f]+)", line)
        if m:
            close_fde()
            cie_offset = int(m.group(1), 16)
            fde, cie, columns, fde_rows = (int(m.group(2), 16), int(m.group(3), 16), cies[cie_offset][0],
                                           cie_offset), None, None, 0
            continue
        m = re.match(r"([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ CIE .* ra=(\d+)", line)
        if m:
            close_fde()
            cie, fde, columns = int(m.group(1), 16), None, None
            cies[cie] = (int(m.group(2)), {})
            continue
        if line.strip().startswith("LOC"):
            columns = line.split()[1:]
            continue
        m = re.match(r"([0-9a-f]{16}) (.*)", line)
        if m and columns:
            values = re.findall(r"\S+ \([^)]*\)|\S+", m.group(2))   # a register shows as "r9 (r9)"
            if fde is not None:
                fde_rows += 1
                rows.append((fde[0], fde[1], int(m.group(1), 16), dict(zip(columns, values), **{"ra=": fde[2]})))
            elif cie is not None:
                cies[cie] = (cies[cie][0], dict(zip(columns, values)))
    return rows


def expected_register(text: str):
    """readelf's notation -> (how, argument) or None for 'no rule' ('u' is both that and undefined)."""
    if text == "u":
        return None
    if text == "s":
        return (SAME_VALUE, 0)
    if text == "exp":
        return (EXPRESSION, None)
    if text == "vexp":
        return (VAL_EXPRESSION, None)
    m = re.fullmatch(r"([cv])([+-]\d+)", text)
    if m:
        return (OFFSET if m.group(1) == "c" else VAL_OFFSET, int(m.group(2)))
    m = re.fullmatch(r"r\d+ \((\w+)\)", text)
    assert m, text
    return (REGISTER, m.group(1))


def check_against_readelf(table: CallFrameTable, rows, names: dict[str, int], bias: int = 0) -> int:
    """Compare each row at its first and last address; returns how many lookups agreed."""
    checked = 0
    by_number = {v: k for k, v in names.items()}
    for i, (fde_start, fde_end, loc, columns) in enumerate(rows):
        nxt = rows[i + 1][2] if i + 1 < len(rows) and rows[i + 1][0] == fde_start else fde_end
        if loc >= fde_end:
            checked += 1   # a row past its FDE's end (the PLT's with no PLT entries) applies nowhere
            continue
        for address in {loc, nxt - 1}:
            rule = table.lookup(address + bias)
            assert rule is not None, f"{table.name}: no rule at {address:#x} (FDE {fde_start:#x}..{fde_end:#x})"
            where = f"{table.name} at {address:#x}: {rule.describe()} vs readelf {columns}"
            cfa = columns["CFA"]
            if cfa == "exp":
                assert rule.cfa_expression is not None, where
            else:
                reg_name, offset = re.fullmatch(r"(\w+)([+-]\d+)", cfa).groups()
                assert (rule.cfa_register, rule.cfa_offset) == (names[reg_name], int(offset)), where
            saved = {reg: (how, arg) for reg, how, arg in rule.saved}
            ra = columns["ra="]
            for column, text in columns.items():
                if column in ("CFA", "ra="):
                    continue
                reg = ra if column == "ra" else names.get(column)
                if reg is None:
                    continue
                want, got = expected_register(text), saved.get(reg)
                if want is None:
                    assert got is None or got[0] == UNDEFINED, where
                elif want[0] == REGISTER:
                    assert got is not None and got[0] == REGISTER and by_number.get(got[1]) == want[1], where
                elif want[1] is None:
                    assert got is not None and got[0] == want[0], where
                else:
                    assert got == want, where
            assert rule.return_column == ra, where
            checked += 1
    return checked


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_system_libraries_match_readelf(arch):
    names = X86_NAMES if arch == "x86_64" else A64_NAMES
    for path in LIBRARIES[arch] + ([OPTIONAL[arch]] if os.path.exists(OPTIONAL[arch]) else []):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing (libc6 / libc6-arm64-cross)")
        table = CallFrameTable.from_path(path)
        rows = readelf_rows(path)
        assert len(rows) > 1000 or "ld-linux" in path, path
        assert check_against_readelf(table, rows, names) >= len(rows)


def test_glibc_restore_rt_is_a_signal_frame_described_by_expressions():
    """__restore_rt's CFI: 'S' augmentation, CFA and every register by DW_OP_breg7 into the ucontext."""
    from hotpatch.arch.x86_64 import unwind as x86
    path = LIBRARIES["x86_64"][0]
    table = CallFrameTable.from_path(path)
    data = open(path, "rb").read()
    offset = data.find(x86.SIGRETURN)
    assert offset > 0 and data.find(x86.SIGRETURN, offset + 1) < 0
    rule = table.lookup(offset - 1)   # file offsets are link-time addresses in libc's first segments
    assert rule is not None and rule.signal_frame
    # Every register is at rsp + UC_MCONTEXT + 8 * its place in struct sigcontext: DW_OP_breg7 (0x77) sleb128.
    saved = {reg: arg for reg, how, arg in rule.saved if how == EXPRESSION}
    for i, reg in enumerate(x86.SIGCONTEXT_ORDER):
        value = x86.UC_MCONTEXT + 8 * i
        assert saved[reg] == bytes([0x77]) + _sleb(value), (reg, saved[reg].hex())


def _sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def compile_program(tmp_path, arch: str, *flags: str, source: str = "unwind_chain.c", name: str = "prog") -> str:
    need(COMPILERS[arch])
    out = str(tmp_path / f"{name}-{arch}")
    subprocess.run([COMPILERS[arch], "-O2", "-g", *flags, "-o", out, os.path.join(FIXTURES, source)], check=True)
    return out


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("flags", [(), ("-fno-omit-frame-pointer", "-O1"), ("-mbranch-protection=standard",),
                                   ("-Wl,--no-eh-frame-hdr",), ("-no-pie", "-fno-pie")])
def test_programs_match_readelf(tmp_path, arch, flags):
    if arch == "x86_64" and "-mbranch-protection=standard" in flags:
        flags = ("-fcf-protection=full",)
    path = compile_program(tmp_path, arch, *flags)
    names = X86_NAMES if arch == "x86_64" else A64_NAMES
    table = CallFrameTable.from_path(path)
    rows = readelf_rows(path)
    assert check_against_readelf(table, rows, names) >= len(rows) > 5
    with_hdr = "-Wl,--no-eh-frame-hdr" not in flags
    assert (table._hdr_locs is not None) == with_hdr   # the search table when there is one, else an index


def test_index_and_search_table_agree(tmp_path):
    """The same FDEs found through .eh_frame_hdr and through the index built from .eh_frame alone."""
    path = LIBRARIES["x86_64"][0]
    table = CallFrameTable.from_path(path).prepare()
    assert table._hdr_locs is not None and len(table._hdr_locs) > 1000
    bare = CallFrameTable.from_eh_frame(table._eh.data, table._eh.address, "bare")
    ranges = bare.fde_ranges()
    assert len(ranges) == len(table._hdr_locs)
    for start, end in ranges[::7]:
        for address in (start, (start + end) // 2, end - 1):
            assert table.lookup(address) == bare.lookup(address)
        assert bare.lookup(end) == table.lookup(end)   # the next FDE's, or None in a gap: both agree


def test_gaps_and_outside_have_no_rule(tmp_path):
    path = compile_program(tmp_path, "x86_64")
    table = CallFrameTable.from_path(path)
    ranges = table.fde_ranges()
    assert table.lookup(ranges[0][0] - 1) is None
    assert table.lookup(ranges[-1][1]) is None
    assert table.lookup(1 << 40) is None
    gaps = [(a_end, b_start) for (_, a_end), (b_start, _) in zip(ranges, ranges[1:]) if b_start > a_end]
    assert gaps, ranges
    assert all(table.lookup(end) is None for end, _ in gaps)


def test_repeated_lookups_are_cached(tmp_path):
    path = compile_program(tmp_path, "x86_64")
    table = CallFrameTable.from_path(path)
    start, end = table.fde_ranges()[-1]
    first = table.lookup(start)
    assert table.lookup(start) is first and start in table._cache


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_memory_image_at_a_bias(tmp_path, arch):
    """from_memory: an ELF image mapped whole at some address (the vdso), read through a reader."""
    path = compile_program(tmp_path, arch, "-shared", "-fPIC", name="lib")
    data = open(path, "rb").read()
    base = 0x7F0000000000
    reads = []

    def read(address: int, size: int) -> bytes:
        reads.append((address, size))
        assert base <= address and address + size <= base + len(data)
        return data[address - base:address - base + size]
    table = CallFrameTable.from_memory(read, base, len(data), name="[fake vdso]")
    assert table.load_bias == base
    reference = CallFrameTable.from_path(path)
    for start, end in reference.fde_ranges():
        assert table.lookup(start) == reference.lookup(start)
        assert table.lookup(end - 1) == reference.lookup(end - 1)
    assert table.read_code(reference.fde_ranges()[0][0], 4) == reference.read_code(reference.fde_ranges()[0][0], 4)


def test_debug_frame_of_a_debug_file(tmp_path):
    """A program built without unwind tables has only .debug_frame, in its debug file (compressed or not)."""
    need("objcopy")
    path = compile_program(tmp_path, "x86_64", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables")
    for compress in ("--compress-debug-sections=none", "--compress-debug-sections=zlib"):
        debug = path + ".debug"
        subprocess.run(["objcopy", "--only-keep-debug", compress, path, debug], check=True)
        stripped = path + ".stripped"
        subprocess.run(["objcopy", "--strip-debug", path, stripped], check=True)
        rows = readelf_rows(path, ".debug_frame")
        assert len(rows) > 3
        without = CallFrameTable.from_path(stripped)
        assert without.lookup(rows[0][2]) is None     # crt files bring some .eh_frame, not the program's
        table = CallFrameTable.from_path(stripped, debug)
        assert check_against_readelf(table, rows, X86_NAMES) >= len(rows)


def test_corrupt_cfi_raises_elf_format_error():
    # An FDE whose CIE pointer points nowhere: wrapped, never a pyelftools exception.
    bad = (20).to_bytes(4, "little") + (0x1000).to_bytes(4, "little") + bytes(16) + bytes(4)
    table = CallFrameTable.from_eh_frame(bad, 0x1000)
    with pytest.raises(ELFFormatError):
        table.prepare()
    with pytest.raises(ELFFormatError):
        CallFrameTable.from_bytes(b"\x7fELF" + bytes(60))
    with pytest.raises(ELFFormatError):
        CallFrameTable.from_path("/nonexistent/file")


def test_pointer_encodings():
    data = bytes.fromhex("f0ffffff") + bytes.fromhex("e58e26") + bytes.fromhex("7f") + (5).to_bytes(8, "little")
    assert decode_pointer(data, 0, 0x1B, 0x1000, None) == (0x1000 - 16, 4)        # pcrel | sdata4
    assert decode_pointer(data, 0, 0x3B, 0, 0x2000) == (0x2000 - 16, 4)           # datarel | sdata4
    assert decode_pointer(data, 0, 0x03, 0, None) == (0xFFFFFFF0, 4)               # udata4
    assert decode_pointer(data, 4, 0x01, 0, None) == (624485, 7)                   # uleb128
    assert decode_pointer(data, 7, 0x09, 0, None) == (-1 & cfi.U64, 8)             # sleb128
    assert decode_pointer(data, 8, 0x00, 0, None) == (5, 16)                       # absptr
    for unsupported in (0x9B, 0x2B, 0x4B, 0x50):   # indirect, textrel, funcrel, aligned
        with pytest.raises(ELFFormatError):
            decode_pointer(data, 0, unsupported, 0, 0)


def test_patch_image_eh_frame(tmp_path):
    """A patch image as hotpatch's linker lays it out: its bare .eh_frame, linked for the image's base,
    covers every function of the patch."""
    from hotpatch.arch import get_arch
    from hotpatch.elf.relocatable import parse_relocatable
    from hotpatch.link.linker import plan_layout
    from hotpatch.ops.build import compile_sources
    need("gcc")
    obj = parse_relocatable(compile_sources([os.path.join(FIXTURES, "patch_target.c")], "gcc", [], str(tmp_path)))
    base = 0x7F12_3400_0000
    image = plan_layout(obj, get_arch("x86_64"), header_size=4096).link(
        base, {"counter": base - 0x10000, "helper": base - 0x20000, "snprintf": base - 0x30000}.get)
    assert image.eh_frame is not None
    start, end = image.eh_frame
    table = CallFrameTable.from_eh_frame(bytes(image.data[start - base:end - base]), start, "patch")
    functions = {n: a for n, a in image.symbols.items() if image.code_range[0] <= a < image.code_range[1]}
    assert len(functions) == 3 and len(table.fde_ranges()) == 3
    for name, address in functions.items():
        if image.sizes.get(name):
            entry = table.lookup(address)
            assert entry is not None and (entry.cfa_register, entry.cfa_offset) == (7, 8), name
            assert (16, OFFSET, -8) in entry.saved
            assert table.lookup(address + image.sizes[name] - 1) is not None, name
    assert table.lookup(image.code_range[1]) is None
