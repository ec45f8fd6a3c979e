"""unwind() (hotpatch/safety/unwind.py) on hand-built stacks of programs compiled here for x86-64 and aarch64
(fixtures/unwind_chain.c: main -> outer -> middle -> inner): the frames a walk finds are exactly the
ones the stack was built with, through frame records, a leaf's link register, PAC-signed return addresses,
the PLT, and signal frames (glibc's __restore_rt, a trampoline like the aarch64 vdso's); and every way a
walk becomes unreliable, with its reason.

The stacks follow each function's prologue, checked here with capstone (push rbp; mov rbp, rsp /
stp x29, x30, [sp, #-16]!; mov x29, sp): a compiler that lays frames out differently fails these checks
rather than the walks."""

import ctypes
import os
import shutil
import struct
import subprocess

import capstone
import pytest
from elftools.elf.elffile import ELFFile

from hotpatch.arch import get_arch
from hotpatch.arch.aarch64 import unwind as a64
from hotpatch.arch.x86_64 import unwind as x86
from hotpatch.elf.cfi import OFFSET, CallFrameTable, FrameRule
from hotpatch.errors import ELFFormatError
from hotpatch.safety import unwind as U
from hotpatch.safety.unwind import CodeMap, Frame, stack_reader, unwind

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, "fixtures", "unwind_chain.c")
COMPILERS = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc"}
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
BIAS = 0x5555_5555_4000     # where the program is "loaded"
LIBC_BIAS = 0x7F00_0000_0000
S = 0x7FFD_0000_1000        # the thread's sp
PAC = 0x002F_0000_0000_0000  # a pointer authentication code in the bits above the 48-bit address


class Program:
    """A compiled fixture: symbols, return addresses after calls, and its CFI."""

    def __init__(self, path: str, arch: str):
        self.path, self.arch = path, arch
        with open(path, "rb") as f:
            elf = ELFFile(f)
            self.symbols = {s.name: (s["st_value"], s["st_size"]) for s in elf.get_section_by_name(".symtab")
                            .iter_symbols() if s.name and s["st_info"]["type"] == "STT_FUNC"}
            text = elf.get_section_by_name(".text")
            self.text, self.text_address = text.data(), text["sh_addr"]
            self.plt = elf.get_section_by_name(".plt")["sh_addr"]
        self.table = CallFrameTable.from_path(path)
        mode = (capstone.CS_ARCH_X86, capstone.CS_MODE_64) if arch == "x86_64" else (capstone.CS_ARCH_ARM64,
                                                                                      capstone.CS_MODE_ARM)
        self.cs = capstone.Cs(*mode)

    def code(self, name: str) -> list:
        value, size = self.symbols[name]
        start = value - self.text_address
        return list(self.cs.disasm(self.text[start:start + size], value))

    def at(self, name: str, offset: int = 0) -> int:
        """Runtime address of name+offset."""
        return BIAS + self.symbols[name][0] + offset

    def after_call(self, caller: str, callee: str) -> int:
        """Runtime return address of caller's call to callee."""
        target = self.symbols[callee][0] if callee in self.symbols else None
        for insn in self.code(caller):
            if insn.mnemonic in ("call", "bl") and (target is None or insn.op_str.endswith(hex(target))):
                if callee in self.symbols or "plt" in insn.op_str or target is None:
                    return BIAS + insn.address + insn.size
        raise AssertionError(f"no call to {callee} in {caller}: {[i.mnemonic for i in self.code(caller)]}")

    def after_plt_call(self, caller: str) -> int:
        for insn in self.code(caller):
            if insn.mnemonic in ("call", "bl") and int(insn.op_str.lstrip("#"), 16) < self.text_address:
                return BIAS + insn.address + insn.size
        raise AssertionError(f"no PLT call in {caller}")

    def assert_frame_record_prologue(self, name: str) -> None:
        """The layout the hand-built stacks assume: a frame record at the frame pointer."""
        insns = [(i.mnemonic, i.op_str) for i in self.code(name)]
        if self.arch == "x86_64":
            assert insns[:2] == [("push", "rbp"), ("mov", "rbp, rsp")], insns[:3]
        else:
            body = insns[1:] if insns[0][0] in ("paciasp", "bti") else insns
            assert body[:2] == [("stp", "x29, x30, [sp, #-0x10]!"), ("mov", "x29, sp")], insns[:3]

    def code_map(self, with_cfi: bool = True) -> CodeMap:
        code = CodeMap(get_arch(self.arch))
        code.add(BIAS, BIAS + 0x10000, self.table if with_cfi else None, BIAS)
        return code


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp("unwind_chain")
    built = {}

    def get(arch: str, *flags: str) -> Program:
        key = (arch, flags)
        if key not in built:
            if shutil.which(COMPILERS[arch]) is None:
                pytest.fail(f"{COMPILERS[arch]} is not installed")
            path = str(out / f"chain-{arch}-{len(built)}")
            subprocess.run([COMPILERS[arch], "-O1", "-fno-omit-frame-pointer", "-g", *flags, "-o", path, SOURCE],
                           check=True)
            built[key] = Program(path, arch)
        return built[key]
    return get


class Stack:
    """Words at addresses from S up; bytes() is the snapshot."""

    def __init__(self, size: int = 0x1000):
        self.data = bytearray(size)

    def __setitem__(self, address: int, value: int) -> None:
        struct.pack_into("<Q", self.data, address - S, value)

    def reader(self, size: int | None = None):
        return stack_reader(bytes(self.data), S, 0, size)


def x86_regs(rip: int, rsp: int, rbp: int, **others):
    regs = x86_regs_type()(rip=rip, rsp=rsp, rbp=rbp)
    for name, value in others.items():
        setattr(regs, name, value)
    return regs


def x86_regs_type():
    return get_arch("x86_64").regs_type


def a64_regs(pc: int, sp: int, x29: int, x30: int):
    regs = get_arch("aarch64").regs_type()
    regs.pc, regs.sp, regs.regs[29], regs.regs[30] = pc, sp, x29, x30
    return regs


# -- x86-64 ---------------------------------------------------------------------------------------

def x86_chain(p: Program) -> tuple[Stack, object, list[tuple[int, int]]]:
    """inner (a leaf, at its first instruction) <- middle <- outer, whose return address is 0."""
    for f in ("middle", "outer"):
        p.assert_frame_record_prologue(f)
    st = Stack()
    st[S] = p.after_call("middle", "inner")             # inner's return address (inner pushes nothing)
    st[S + 8] = S + 24                                  # middle: push rbp (outer's rbp); rbp = S + 8
    st[S + 16] = p.after_call("outer", "middle")        # middle's return address
    st[S + 24] = 0                                      # outer: saved rbp; rbp = S + 24
    st[S + 32] = 0                                      # outer's return address: the outermost frame
    regs = x86_regs(p.at("inner"), S, S + 8)
    expected = [(p.at("inner"), S + 8), (p.after_call("middle", "inner"), S + 24),
                (p.after_call("outer", "middle"), S + 40)]
    return st, regs, expected


def frames_of(walk) -> list[tuple[int, int | None]]:
    return [(f.pc, f.cfa) for f in walk.frames]


def test_x86_64_chain_through_frame_records(build):
    p = build("x86_64")
    st, regs, expected = x86_chain(p)
    walk = unwind(get_arch("x86_64"), regs, st.reader(), p.code_map().find_rule)
    assert walk.reliable and walk.end == U.OUTERMOST, walk.why()
    assert frames_of(walk) == expected
    assert not any(f.signal for f in walk.frames)


def test_x86_64_first_frame_mid_prologue(build):
    """Stopped in middle after `push rbp`, before `mov rbp, rsp`: the CFA is rsp + 16 there."""
    p = build("x86_64")
    st = Stack()
    st[S] = S + 16                                      # saved rbp (outer's)
    st[S + 8] = p.after_call("outer", "middle")
    st[S + 16] = 0
    st[S + 24] = 0
    regs = x86_regs(p.at("middle", 1), S, S + 16)
    walk = unwind(get_arch("x86_64"), regs, st.reader(), p.code_map().find_rule)
    assert walk.reliable, walk.why()
    assert frames_of(walk) == [(p.at("middle", 1), S + 16), (p.after_call("outer", "middle"), S + 32)]


def test_x86_64_plt_entry(build):
    """A thread in a PLT entry: the linker's CFI computes the CFA from rsp and rip (DW_CFA_def_cfa_expression)."""
    p = build("x86_64")
    ra = p.after_plt_call("main")
    for offset, pushed in ((0, 0), (6, 0), (11, 8)):      # jmp *GOT; push $n; jmp PLT0
        st = Stack()
        st[S] = 0x77                                    # the pushed relocation index, after `push`
        st[S + pushed] = ra
        rbp = S + pushed + 8 + 16                       # main: push rbp; mov rbp, rsp; push rbx; sub rsp, 8
        st[rbp] = 0
        st[rbp + 8] = 0
        regs = x86_regs(BIAS + p.plt + 16 + offset, S, rbp)
        walk = unwind(get_arch("x86_64"), regs, st.reader(), p.code_map().find_rule)
        assert walk.reliable, walk.why()
        assert frames_of(walk)[:2] == [(BIAS + p.plt + 16 + offset, S + pushed + 8), (ra, rbp + 16)]


def libc_sigreturn() -> int:
    data = open(LIBC, "rb").read()
    offset = data.find(x86.SIGRETURN)
    assert offset > 0, "no __restore_rt in libc"
    return offset   # libc's first segments map file offsets to equal link-time addresses


def x86_signal_stack(p: Program) -> tuple[Stack, object, int, list[tuple[int, bool]]]:
    """inner (a handler, at its entry) <- __restore_rt <- middle, interrupted at its call (exact pc)."""
    t = libc_sigreturn()
    st = Stack(0x2000)
    m = S + 0x1000                                       # the interrupted stack
    st[S] = LIBC_BIAS + t                               # the handler returns into the trampoline
    uc = S + 8                                          # sp in the trampoline: the ucontext
    call = next(i.address for i in p.code("middle") if i.mnemonic == "call")
    interrupted = {"r8": 8, "r9": 9, "rdi": 41, "rsi": 42, "rbx": 0x1234, "rbp": m, "rsp": m,
                   "rip": BIAS + call, "rax": 1, "rcx": 2, "rdx": 3, "r12": 12, "r13": 13, "r14": 14,
                   "r15": 15, "r10": 10, "r11": 11}
    order = ["r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx", "rdx", "rax",
             "rcx", "rsp", "rip"]
    for i, name in enumerate(order):
        st[uc + 40 + 8 * i] = interrupted[name]
    st[m] = m + 16                                      # middle's frame record
    st[m + 8] = p.after_call("outer", "middle")
    st[m + 16] = 0
    st[m + 24] = 0
    regs = x86_regs(p.at("inner"), S, 0xDEAD)
    expected = [(p.at("inner"), False), (LIBC_BIAS + t, True), (BIAS + call, False),
                (p.after_call("outer", "middle"), False)]
    return st, regs, m, expected


def test_x86_64_signal_frame_by_trampoline_bytes(build):
    p = build("x86_64")
    st, regs, m, expected = x86_signal_stack(p)
    code = p.code_map()
    code.add(LIBC_BIAS, LIBC_BIAS + 0x200000, CallFrameTable.from_path(LIBC), LIBC_BIAS)
    walk = unwind(get_arch("x86_64"), regs, st.reader(), code.find_rule)
    assert walk.reliable, walk.why()
    assert [(f.pc, f.signal) for f in walk.frames] == expected
    assert [f.cfa for f in walk.frames] == [S + 8, S + 8, m + 16, m + 32]
    assert code.find_rule(LIBC_BIAS + libc_sigreturn() - 1) is U.SIGRETURN


def test_x86_64_signal_frame_by_glibc_cfi_agrees(build):
    """Without the byte check, glibc's own CFI for __restore_rt ('S', expressions) gives the same frames."""
    p = build("x86_64")
    st, regs, m, expected = x86_signal_stack(p)
    libc = CallFrameTable.from_path(LIBC)
    program = p.table

    def cfi_only(address: int):
        if address >= LIBC_BIAS:
            return libc.lookup(address - LIBC_BIAS)
        return program.lookup(address - BIAS)
    walk = unwind(get_arch("x86_64"), regs, st.reader(), cfi_only)
    assert walk.reliable, walk.why()
    assert [(f.pc, f.signal) for f in walk.frames] == expected
    assert walk.frames[1].cfa == m          # glibc's CFA there: the interrupted rsp


def test_x86_64_fixture_trampoline_recognised_despite_its_cfi(build):
    """The fixture's trampoline has deliberately wrong CFI: the bytes decide, and are found in the program."""
    p = build("x86_64")
    st, regs, m, expected = x86_signal_stack(p)
    st[S] = p.at("sigtramp")
    walk = unwind(get_arch("x86_64"), regs, st.reader(), p.code_map().find_rule)
    assert walk.reliable, walk.why()
    assert [(f.pc, f.signal) for f in walk.frames] == [expected[0], (p.at("sigtramp"), True)] + expected[2:]


# -- aarch64 ---------------------------------------------------------------------------------------

def a64_chain(p: Program, pac: int = 0) -> tuple[Stack, object, list[tuple[int, int]]]:
    """inner (a leaf: its return address only in LR) <- middle <- outer, whose return address is 0."""
    for f in ("middle", "outer"):
        p.assert_frame_record_prologue(f)
    st = Stack()
    st[S] = S + 16                                      # middle's frame record: outer's x29, middle's x30
    st[S + 8] = p.after_call("outer", "middle") | pac
    st[S + 16] = 0                                      # outer's frame record
    st[S + 24] = 0
    entry = 4 if p.code("inner")[0].mnemonic == "bti" else 0
    regs = a64_regs(p.at("inner", entry), S, S, p.after_call("middle", "inner"))
    expected = [(p.at("inner", entry), S), (p.after_call("middle", "inner"), S + 16),
                (p.after_call("outer", "middle"), S + 32)]
    return st, regs, expected


def test_aarch64_leaf_returns_through_lr(build):
    p = build("aarch64")
    st, regs, expected = a64_chain(p)
    walk = unwind(get_arch("aarch64"), regs, st.reader(), p.code_map().find_rule)
    assert walk.reliable and walk.end == U.OUTERMOST, walk.why()
    assert frames_of(walk) == expected


def test_aarch64_pac_signed_return_addresses(build):
    """-mbranch-protection=standard: saved x30 values carry a PAC (and the CFI DW_CFA_AARCH64_negate_ra_state)."""
    p = build("aarch64", "-mbranch-protection=standard")
    assert [i.mnemonic for i in p.code("middle")][0] == "paciasp"
    st, regs, expected = a64_chain(p, pac=PAC)
    walk = unwind(get_arch("aarch64"), regs, st.reader(), p.code_map().find_rule)
    assert walk.reliable, walk.why()
    assert frames_of(walk) == expected


def test_aarch64_after_paciasp_before_the_save(build):
    """Stopped between paciasp and stp: the signed return address is still in LR (rule: same value)."""
    p = build("aarch64", "-mbranch-protection=standard")
    st = Stack()
    st[S] = 0
    st[S + 8] = 0
    ra = p.after_call("outer", "middle")
    regs = a64_regs(p.at("middle", 4), S, S, ra | PAC)
    # outer's frame record is at S (outer did stp; its caller's x30 there is 0: the outermost frame)
    walk = unwind(get_arch("aarch64"), regs, st.reader(), p.code_map().find_rule)
    assert walk.reliable, walk.why()
    assert frames_of(walk) == [(p.at("middle", 4), S), (ra, S + 16)]


def test_aarch64_plt_has_no_cfi(build):
    """GNU ld writes no CFI for the aarch64 PLT: a thread in it is an unreliable stack, not a guess."""
    p = build("aarch64")
    st = Stack()
    regs = a64_regs(BIAS + p.plt + 32, S, S, p.after_plt_call("main"))
    walk = unwind(get_arch("aarch64"), regs, st.reader(), p.code_map().find_rule)
    assert not walk.reliable and walk.end == U.NO_CFI and walk.address == BIAS + p.plt + 32


def a64_signal_stack(p: Program) -> tuple[Stack, object, int, list[tuple[int, bool]]]:
    """inner (a handler, a leaf) <- sigtramp <- middle, interrupted at its bl (exact pc)."""
    st = Stack(0x2000)
    m = S + 0x1000
    bl = next(i.address for i in p.code("middle") if i.mnemonic == "bl")
    values = [0x100 + i for i in range(31)] + [m, BIAS + bl]    # x0..x30, sp, pc
    values[29] = m                                               # middle's frame pointer
    values[30] = 0x5A5A                                          # LR: clobbered garbage in middle
    for i, v in enumerate(values):
        st[S + a64.SC_REGS + 8 * i] = v
    st[m] = m + 16                                               # middle's frame record
    st[m + 8] = p.after_call("outer", "middle")
    st[m + 16] = 0
    st[m + 24] = 0
    regs = a64_regs(p.at("inner"), S, 0xBAD, p.at("sigtramp"))   # the kernel sets LR to the trampoline
    expected = [(p.at("inner"), False), (p.at("sigtramp"), True), (BIAS + bl, False),
                (p.after_call("outer", "middle"), False)]
    return st, regs, m, expected


def test_aarch64_signal_frame_reads_the_sigcontext(build):
    p = build("aarch64")
    st, regs, m, expected = a64_signal_stack(p)
    walk = unwind(get_arch("aarch64"), regs, st.reader(), p.code_map().find_rule)
    assert walk.reliable, walk.why()
    assert [(f.pc, f.signal) for f in walk.frames] == expected
    assert [f.cfa for f in walk.frames] == [S, S, m + 16, m + 32]


def test_aarch64_vdso_like_cfi_alone_would_skip_the_interrupted_frame(build):
    """Why the trampoline is recognised by its bytes: the vdso's CFI follows the frame record the kernel
    pushes ({x29, x30} of the interrupted code), so the interrupted pc itself would be lost."""
    p = build("aarch64")
    st, regs, m, expected = a64_signal_stack(p)
    record = S + 0x800
    st[record] = m
    st[record + 8] = p.after_call("outer", "middle")   # as if LR held it: the kernel stores x30, not pc
    regs.regs[29] = record
    walk = unwind(get_arch("aarch64"), regs, st.reader(), lambda a: p.table.lookup(a - BIAS))
    pcs = [f.pc for f in walk.frames]
    assert pcs[:3] == [expected[0][0], expected[1][0], expected[3][0]] and expected[2][0] not in pcs


# -- the signal frame readers -------------------------------------------------------------------------

def test_sigframe_readers_on_hand_built_frames():
    st = Stack(0x1000)
    for i in range(0x1000 // 8):
        st[S + 8 * i] = 0x1000 + i                       # every word says where it is
    got = x86.sigframe_registers(S, st.reader())
    words = {name: 0x1000 + (40 // 8) + i for i, name in enumerate(
        "r8 r9 r10 r11 r12 r13 r14 r15 rdi rsi rbp rbx rdx rax rcx rsp rip".split())}
    names = "rax rdx rcx rbx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip".split()
    assert got == [words[n] for n in names]
    got = a64.sigframe_registers(S, st.reader())
    assert got == [0x1000 + (128 + 176 + 8) // 8 + i for i in range(33)]
    assert a64.sigframe_registers(S, st.reader(300)) is None
    assert x86.sigframe_registers(S, st.reader(100)) is None


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_sigframe_offsets_match_the_c_headers(tmp_path, arch):
    """offsetof in glibc's ucontext_t (the kernel's layout) and siginfo_t, from each compiler's headers."""
    if shutil.which(COMPILERS[arch]) is None:
        pytest.fail(f"{COMPILERS[arch]} is not installed")
    src = tmp_path / "off.c"
    src.write_text("#define _GNU_SOURCE\n#include <signal.h>\n#include <stddef.h>\n#include <ucontext.h>\n"
                   "struct rt_sigframe_a64 { siginfo_t info; ucontext_t uc; };\n#ifdef __aarch64__\n"
                   "long v[] = { offsetof(struct rt_sigframe_a64, uc.uc_mcontext.regs),"
                   " offsetof(struct rt_sigframe_a64, uc.uc_mcontext.sp),"
                   " offsetof(struct rt_sigframe_a64, uc.uc_mcontext.pc) };\n#else\n"
                   "long v[] = { offsetof(ucontext_t, uc_mcontext.gregs[REG_R8]),"
                   " offsetof(ucontext_t, uc_mcontext.gregs[REG_RSP]),"
                   " offsetof(ucontext_t, uc_mcontext.gregs[REG_RIP]) };\n#endif\n")
    asm = subprocess.run([COMPILERS[arch], "-S", "-o", "-", str(src)], capture_output=True, text=True,
                         check=True).stdout
    values = [int(line.split()[1]) for line in asm.splitlines() if line.strip().startswith((".quad", ".xword"))]
    if arch == "x86_64":
        assert values == [x86.UC_MCONTEXT, x86.UC_MCONTEXT + 15 * 8, x86.UC_MCONTEXT + 16 * 8]
        assert x86.SIGCONTEXT_ORDER[15:] == (x86.RSP, x86.RA)
    else:
        assert values == [a64.SC_REGS, a64.SC_SP, a64.SC_PC]


# -- unreliable stacks, each with its reason ------------------------------------------------------------

def test_no_cfi(build):
    p = build("x86_64")
    st, regs, _ = x86_chain(p)
    walk = unwind(get_arch("x86_64"), regs, st.reader(), p.code_map(with_cfi=False).find_rule)
    assert (walk.reliable, walk.end, walk.address) == (False, U.NO_CFI, p.at("inner"))
    assert walk.frames == [Frame(p.at("inner"), None, False)]
    assert "no CFI at 0x" in walk.why()


def test_return_address_outside_any_mapping(build):
    p = build("x86_64")
    st, regs, expected = x86_chain(p)
    st[S + 16] = 0x1234                                 # middle's return address: nowhere
    walk = unwind(get_arch("x86_64"), regs, st.reader(), p.code_map().find_rule)
    assert (walk.reliable, walk.end, walk.address) == (False, U.NOT_MAPPED, 0x1234)
    assert [f.pc for f in walk.frames] == [pc for pc, _ in expected[:2]] + [0x1234]


def test_cfa_not_increasing(build):
    p = build("x86_64")
    st, _, _ = x86_chain(p)
    regs = x86_regs(p.at("inner"), S, S - 16)           # rbp below sp: middle's CFA would be S, below inner's
    walk = unwind(get_arch("x86_64"), regs, st.reader(), p.code_map().find_rule)
    assert (walk.reliable, walk.end, walk.address) == (False, U.LOOP, S)


def test_read_outside_the_snapshot(build):
    p = build("x86_64")
    st, regs, _ = x86_chain(p)
    walk = unwind(get_arch("x86_64"), regs, st.reader(24), p.code_map().find_rule)
    assert (walk.reliable, walk.end, walk.address) == (False, U.OUTSIDE_SNAPSHOT, S + 24)
    assert len(walk.frames) == 3 and walk.detail == f"r6 saved by pc {p.after_call('outer', 'middle'):#x}"


def test_unsupported_expression_and_unknown_register(build):
    p = build("x86_64")
    st, regs, _ = x86_chain(p)
    addr = FrameRule(-1, 0, bytes([0x03]) + bytes(8), ((16, OFFSET, -8),), 16, False)   # DW_OP_addr
    walk = unwind(get_arch("x86_64"), regs, st.reader(), lambda a: addr)
    assert (walk.reliable, walk.end) == (False, U.UNSUPPORTED_EXPRESSION) and "0x03" in walk.detail
    rbx_based = FrameRule(3, 8, None, ((16, OFFSET, -8),), 16, False)
    undefine_rbx = FrameRule(7, 8, None, ((3, U.UNDEFINED, 0), (16, OFFSET, -8)), 16, False)
    rules = iter([undefine_rbx, rbx_based])
    walk = unwind(get_arch("x86_64"), regs, st.reader(), lambda a: next(rules))
    assert (walk.reliable, walk.end, walk.detail) == (False, U.UNKNOWN_REGISTER, "r3 (CFA base)")


def test_caller_without_saved_return_address(build):
    """aarch64: a frame above the first whose CFI leaves x30 'same value' cannot be at a call: unreliable."""
    p = build("aarch64")
    st, regs, _ = a64_chain(p)
    real = p.code_map().find_rule

    def forgetful(address: int):
        rule = real(address)
        if address == p.after_call("middle", "inner") - 1:
            rule = rule._replace(saved=tuple(s for s in rule.saved if s[0] != 30))
        return rule
    walk = unwind(get_arch("aarch64"), regs, st.reader(), forgetful)
    assert (walk.reliable, walk.end) == (False, U.RA_NOT_SAVED)


def test_too_many_frames_and_corrupt_cfi(build):
    p = build("x86_64")
    st, regs, _ = x86_chain(p)
    walk = unwind(get_arch("x86_64"), regs, st.reader(), p.code_map().find_rule, max_frames=2)
    assert (walk.reliable, walk.end, len(walk.frames)) == (False, U.TOO_DEEP, 2)

    def corrupt(address: int):
        raise ELFFormatError("corrupt call frame information in x")
    walk = unwind(get_arch("x86_64"), regs, st.reader(), corrupt)
    assert (walk.reliable, walk.end) == (False, U.BAD_CFI) and "corrupt" in walk.detail


def test_stops_reliably_above_the_bound(build):
    """Once a frame's CFA is above stop_above, the caller it returns to is the last frame walked."""
    p = build("x86_64")
    st, regs, expected = x86_chain(p)
    walk = unwind(get_arch("x86_64"), regs, st.reader(), p.code_map().find_rule, stop_above=S + 20)
    assert (walk.reliable, walk.end, walk.address) == (True, U.BOUND, S + 24)
    assert frames_of(walk) == expected[:2] + [(expected[2][0], None)]
    full = unwind(get_arch("x86_64"), regs, st.reader(), p.code_map().find_rule, stop_above=S + 40)
    assert full.end == U.OUTERMOST and frames_of(full) == expected


def test_code_map_answers_and_caches(build):
    p = build("x86_64")
    code = p.code_map()
    code.add(0x1000, 0x2000, None)
    assert code.find_rule(0x1800) is None
    assert code.find_rule(0x2000) is U.OUTSIDE and code.find_rule(0x10) is U.OUTSIDE
    rule = code.find_rule(p.at("middle", 4))
    assert isinstance(rule, FrameRule) and code.find_rule(p.at("middle", 4)) is rule
    assert code.find_rule(p.at("sigtramp")) is U.SIGRETURN
    assert code.find_rule(p.at("sigtramp") - 1) is U.SIGRETURN       # a return address into it, minus one
    assert code.find_rule(p.at("sigtramp") + 7) is U.SIGRETURN       # the syscall instruction
    assert code.find_rule(p.at("sigtramp") + 9) is not U.SIGRETURN


def test_registers_by_dwarf_number():
    x = x86_regs(0x401000, 0x7FFC0000, 0x7FFC0010, rax=1, rdx=2, rcx=3, rbx=4, rsi=5, rdi=6, r8=8, r15=15)
    got = get_arch("x86_64").unwind_registers(x)
    assert got[:7] == [1, 2, 3, 4, 5, 6, 0x7FFC0010] and got[7] == 0x7FFC0000
    assert got[8] == 8 and got[15] == 15 and got[16] == 0x401000 and len(got) == 17
    a = a64_regs(0x400000, 0x7FFF0000, 0x7FFF0010, 0x400100 | PAC)
    got = get_arch("aarch64").unwind_registers(a)
    assert got[29:] == [0x7FFF0010, 0x400100 | PAC, 0x7FFF0000, 0x400000] and len(got) == 33
    assert get_arch("aarch64").code_address(0x400100 | PAC) == 0x400100
    assert ctypes.sizeof(a) == 34 * 8


def test_equal_cfa_only_for_the_outermost_frame():
    """aarch64's thread_start and _start call without a frame of their own: the caller's CFA equals the
    callee's. Reliable when that caller is the outermost frame (x30 undefined), a loop otherwise."""
    st = Stack()
    st[S + 8] = 0x400100                                 # frame 0 saved x30 at CFA - 8
    st[S] = 0
    callee = FrameRule(31, 16, None, ((30, OFFSET, -8),), 30, False)
    outermost = FrameRule(31, 0, None, ((30, U.UNDEFINED, 0),), 30, False)
    looping = FrameRule(31, 0, None, ((30, OFFSET, -8),), 30, False)
    regs = a64_regs(0x400000, S, 0, 0)
    for second, (reliable, end) in ((outermost, (True, U.OUTERMOST)), (looping, (False, U.LOOP))):
        rules = {0x400000: callee, 0x4000FF: second}
        walk = unwind(get_arch("aarch64"), regs, st.reader(), rules.get)
        assert (walk.reliable, walk.end) == (reliable, end)
        assert frames_of(walk) == [(0x400000, S + 16), (0x400100, S + 16)]
