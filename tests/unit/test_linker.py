"""The x86-64 linker on a real gcc-compiled patch object, at chosen bases, decoded with capstone. No process.
(AArch64 linking: test_arch_aarch64.py.)"""

import os
import struct
import subprocess
import tempfile

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from harness import FIXTURES, compiler_for

from hotpatch.arch import get_arch
from hotpatch.elf.relocatable import parse_relocatable
from hotpatch.errors import RelocationError, SymbolNotFound
from hotpatch.link.linker import PROT_EXEC, PROT_READ, PROT_WRITE, plan_layout
from hotpatch.ops.build import compile_sources

ARCH = get_arch("x86_64")
CC = compiler_for("x86_64")
pytestmark = pytest.mark.skipif(CC is None, reason="no x86-64 C compiler here")


@pytest.fixture(scope="module")
def obj():
    with tempfile.TemporaryDirectory() as d:
        return parse_relocatable(compile_sources([os.path.join(FIXTURES, "patch_target.c")], CC, [], d))


CS = Cs(CS_ARCH_X86, CS_MODE_64)
CS.detail = True


def disasm(image, address, count=64):
    off = address - image.base
    return list(CS.disasm(bytes(image.data[off:off + 256]), address))[:count]


def test_layout_segments_never_wx(obj):
    plan = plan_layout(obj, ARCH, header_size=4096)
    prots = [s.prot for s in plan.segments]
    assert prots == [PROT_READ, PROT_READ | PROT_EXEC, PROT_READ | PROT_WRITE]
    assert all(s.offset % 4096 == 0 and s.size % 4096 == 0 for s in plan.segments)
    assert sorted(plan.undefined) == ["counter", "helper", "snprintf"]


def test_near_and_far_symbols(obj):
    plan = plan_layout(obj, ARCH, header_size=4096)
    base = 0x5555_0000_0000
    near = {"counter": base - 0x10000, "helper": base - 0x20000, "snprintf": 0x7F00_1234_5678}
    image = plan.link(base, near.get)
    compute = image.symbols["compute"]
    insns = disasm(image, compute)
    call = next(i for i in insns if i.mnemonic == "call")
    assert int(call.op_str, 16) == near["helper"]          # in rel32 reach: direct
    # counter through a GOT slot holding its address (GOTPCREL)
    load = next(i for i in insns if i.mnemonic == "mov" and "qword ptr [rip" in i.op_str)
    slot = load.address + load.size + load.disp
    assert struct.unpack_from("<Q", image.data, slot - base)[0] == near["counter"]
    # snprintf is ~40 TiB away: the call goes through a stub jumping via a GOT slot
    version = disasm(image, image.symbols["version"])
    call = next(i for i in version if i.mnemonic in ("call", "jmp") and i.op_str.startswith("0x"))
    stub = disasm(image, int(call.op_str, 16), 1)[0]
    assert stub.mnemonic == "jmp" and "rip" in stub.op_str
    stub_slot = stub.address + stub.size + stub.disp
    assert struct.unpack_from("<Q", image.data, stub_slot - base)[0] == near["snprintf"]


def test_link_is_position_dependent_only_through_relocations(obj):
    plan = plan_layout(obj, ARCH, header_size=4096)
    syms = {"counter": 0x1000, "helper": 0x2000, "snprintf": 0x3000}
    a = plan.link(0x10_0000, syms.get)
    b = plan.link(0x10_0000, syms.get)
    assert a.data == b.data
    c = plan.link(0x20_0000, {k: v + 0x10_0000 for k, v in syms.items()}.get)
    assert a.data != c.data    # absolute GOT entries differ...
    assert a.symbols["compute"] + 0x10_0000 == c.symbols["compute"]


def test_unresolved_symbol(obj):
    plan = plan_layout(obj, ARCH, header_size=4096)
    with pytest.raises(SymbolNotFound, match="counter"):
        plan.link(0x10_0000, {"helper": 1, "snprintf": 2}.get)


def test_pc32_overflow_is_an_error():
    src = "extern int far_data __attribute__((visibility(\"hidden\")));\nint f(void) { return far_data; }\n"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "p.c")
        open(path, "w").write(src)
        o = parse_relocatable(compile_sources([path], CC, [], d))
    plan = plan_layout(o, ARCH, header_size=4096)
    image = plan.link(0x5555_0000_0000, {"far_data": 0x5555_1000_0000}.get)   # in reach: a direct load
    load = next(i for i in disasm(image, image.symbols["f"]) if "rip" in i.op_str)
    assert load.mnemonic == "mov" and load.address + load.size + load.disp == 0x5555_1000_0000
    with pytest.raises(RelocationError, match="R_X86_64_PC32"):
        plan.link(0x5555_0000_0000, {"far_data": 0x7F00_0000_0000}.get)


def test_non_pic_code_links_only_low(obj):
    """Code compiled without -fPIC (a non-PIE program's own objects, as build --diff compiles them) has
    absolute 32-bit relocations: the plan says the image must be low, and linking it high overflows."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "nopic.c")
        with open(src, "w") as f:
            f.write('const char *name(void) { return "fixed"; }\n')
        out = os.path.join(d, "nopic.o")
        subprocess.run([CC, "-O2", "-fno-pic", "-mcmodel=small", "-c", src, "-o", out], check=True)
        with open(out, "rb") as f:
            nopic = parse_relocatable(f.read())
    plan = plan_layout(nopic, ARCH, header_size=4096)
    assert plan.low
    image = plan.link(0x3F0000, {}.get)
    insns = disasm(image, image.symbols["name"], 2)
    assert insns[0].mnemonic == "mov" and insns[0].operands[1].imm == image.base + plan.section_offsets[
        next(i for i, s in nopic.sections.items() if s.name.startswith(".rodata"))]
    with pytest.raises(RelocationError, match="overflow"):
        plan.link(0x5555_0000_0000, {}.get)
    assert not plan_layout(obj, ARCH, header_size=4096).low   # hotpatch build's -fPIC code: anywhere
