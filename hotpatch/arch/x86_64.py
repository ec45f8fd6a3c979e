"""x86-64: user_regs_struct, the syscall ABI, jmp encodings, ELF relocations."""

import ctypes
import struct

from hotpatch.arch.base import Arch, Branch
from hotpatch.errors import FunctionTooShort
from hotpatch.link import reloc as R

ENDBR64 = b"\xf3\x0f\x1e\xfa"
JMP_REL32 = 0xE9
# jmp *0(%rip); ud2 would need 16 bytes; the 14-byte form keeps short
# functions patchable and the quadword directly follows the jump.
JMP_ABS_PREFIX = b"\xff\x25\x00\x00\x00\x00"


class user_regs_struct(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
        "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs")]


def rel32_reaches(site_end: int, target: int) -> bool:
    return -(1 << 31) <= target - site_end < (1 << 31)


TLS_WHY = "thread-local variables in a patch are not supported; use a global or a static variable"
PIC_WHY = "absolute 32-bit address: build the patch with -fPIC (hotpatch build does)"

RELOCATIONS: dict[int, R.RelocType] = {
    1: R.RelocType("R_X86_64_64", R.absolute, R.truncating_field(8), 8),
    2: R.RelocType("R_X86_64_PC32", R.pc_relative, R.int_field(4, True), 4),
    4: R.RelocType("R_X86_64_PLT32", R.pc_relative, R.int_field(4, True), 4, is_call=True),
    9: R.RelocType("R_X86_64_GOTPCREL", R.got_pc_relative, R.int_field(4, True), 4, needs_got=True),
    10: R.unsupported("R_X86_64_32", PIC_WHY),
    11: R.unsupported("R_X86_64_32S", PIC_WHY),
    24: R.RelocType("R_X86_64_PC64", R.pc_relative, R.int_field(8, True), 8),
    41: R.RelocType("R_X86_64_GOTPCRELX", R.got_pc_relative, R.int_field(4, True), 4, needs_got=True),
    42: R.RelocType("R_X86_64_REX_GOTPCRELX", R.got_pc_relative, R.int_field(4, True), 4, needs_got=True),
    19: R.unsupported("R_X86_64_TLSGD", TLS_WHY),
    20: R.unsupported("R_X86_64_TLSLD", TLS_WHY),
    21: R.unsupported("R_X86_64_DTPOFF32", TLS_WHY),
    22: R.unsupported("R_X86_64_GOTTPOFF", TLS_WHY),
    23: R.unsupported("R_X86_64_TPOFF32", TLS_WHY),
    26: R.unsupported("R_X86_64_GOTPC32", "large code model: build without -mcmodel=large"),
    27: R.unsupported("R_X86_64_GOT64", "large code model: build without -mcmodel=large"),
    29: R.unsupported("R_X86_64_GOTPC64", "large code model: build without -mcmodel=large"),
}


class X86_64(Arch):
    name = "x86_64"
    e_machine = 62
    regs_type = user_regs_struct
    syscall_insn = b"\x0f\x05"
    syscall_insn_align = 1
    syscall_numbers = {"mmap": 9, "mprotect": 10, "munmap": 11, "prctl": 157}
    relocations = RELOCATIONS
    got_reloc_types = {6, 7}   # R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT
    stub_size = 8
    branch_reach = (1 << 31) - 1
    near_branch_size = 5
    far_branch_size = 14

    def pc(self, regs) -> int:
        return regs.rip

    def sp(self, regs) -> int:
        return regs.rsp

    def thread_view(self, regs) -> tuple[tuple[int, ...], int, int]:
        """Frames of a thread end below its thread pointer when that lies above sp.

        x86-64 TLS is variant II: glibc puts the static TLS and then the TCB
        (struct pthread, at fs_base) at the top of a thread's stack mapping, and
        the stack grows down from below them. Nothing at or above fs_base is a
        frame, and struct pthread's own code pointers (the start routine) are
        no return address. (The main thread's fs_base lies above its stack
        mapping, whose end is then the smaller bound.) Called for every thread
        while all are stopped, so no helper calls.
        """
        sp, fs_base = regs.rsp, regs.fs_base
        return (regs.rip,), sp, fs_base if fs_base > sp else 1 << 64

    def hijack_for_syscall(self, regs, gadget: int, nr: int, args: list[int]):
        new = user_regs_struct.from_buffer_copy(regs)
        new.rip = gadget
        new.rax = nr
        # orig_rax = -1 keeps the kernel from "restarting" an interrupted
        # syscall by rewinding rip over our gadget (-ERESTART* left in rax).
        new.orig_rax = (1 << 64) - 1
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(new, name, value & ((1 << 64) - 1))
        return new

    def syscall_result(self, regs) -> int:
        value = regs.rax
        return value - (1 << 64) if value >= 1 << 63 else value

    def landing_pad(self, code: bytes) -> int:
        return len(ENDBR64) if code.startswith(ENDBR64) else 0

    def padding_length(self, code: bytes) -> int:
        """Leading bytes of `code` that are alignment padding (nop, int3): never executed."""
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs
        length = 0
        for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, 0):
            if insn.mnemonic not in ("nop", "int3"):
                break
            length = insn.address + insn.size
        return length

    def in_branch_reach(self, site: int, target: int) -> bool:
        return rel32_reaches(site + 5, target)

    def branch(self, site: int, target: int, room: int) -> Branch:
        """jmp rel32 when it reaches, else jmp *0(%rip) with the address inline."""
        if self.in_branch_reach(site, target) and room >= 5:
            return Branch(site, struct.pack("<Bi", JMP_REL32, target - (site + 5)), "near")
        if room >= self.far_branch_size:
            return Branch(site, JMP_ABS_PREFIX + struct.pack("<Q", target), "far")
        need = 5 if self.in_branch_reach(site, target) else self.far_branch_size
        raise FunctionTooShort(
            f"only {room} bytes at {site:#x} for a {need}-byte jump to {target:#x}")

    def stub(self, stub_addr: int, slot_addr: int) -> bytes:
        """jmp *slot(%rip); ud2 — calls from the image to code out of rel32 reach."""
        rel = slot_addr - (stub_addr + 6)
        if not -(1 << 31) <= rel < (1 << 31):
            raise ValueError("GOT slot out of reach of its stub")
        return b"\xff\x25" + struct.pack("<i", rel) + b"\x0f\x0b"
