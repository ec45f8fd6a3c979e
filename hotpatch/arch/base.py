"""The interface every architecture module implements."""

import ctypes
from dataclasses import dataclass

from hotpatch.link.reloc import RelocType


@dataclass(frozen=True)
class Branch:
    """Bytes to write at `site` so that execution continues at `target`."""

    site: int
    code: bytes
    form: str  # "near", "page" (aarch64 adrp) or "far": which encoding reached


class Arch:
    name: str
    e_machine: int
    regs_type: type[ctypes.Structure]
    syscall_insn: bytes
    syscall_insn_align: int
    syscall_numbers: dict[str, int]
    relocations: dict[int, RelocType]
    got_reloc_types: set[int]   # dynamic relocations that fill a GOT slot (GLOB_DAT, JUMP_SLOT)
    stub_size: int          # one call stub / veneer through a GOT slot
    branch_reach: int       # distance the shortest jump reaches: where to place the image
    fallback_reach: int | None = None   # a second, longer form worth placing for (aarch64 adrp)
    near_branch_size: int   # smallest trampoline
    far_branch_size: int    # trampoline reaching any address

    # registers
    def pc(self, regs) -> int: ...
    def sp(self, regs) -> int: ...
    def code_pointers(self, regs) -> list[int]:
        """Registers other than pc that may hold a live return address (aarch64 LR)."""
        return []
    def thread_view(self, regs) -> tuple[tuple[int, ...], int, int]:
        """What the activeness check needs of a stopped thread, in one call:
        ((pc, other code pointers), sp, an upper bound of its frames or 2**64:
        the end of the stack mapping then bounds them)."""
        return (self.pc(regs), *self.code_pointers(regs)), self.sp(regs), 1 << 64
    def hijack_for_syscall(self, regs, gadget: int, nr: int, args: list[int]): ...
    def syscall_result(self, regs) -> int: ...
    def after_syscall_insn(self, gadget: int) -> int:
        return gadget + len(self.syscall_insn)

    # code
    def landing_pad(self, code: bytes) -> int:
        """Bytes at a function entry that must stay (endbr64, bti c)."""
        return 0
    def entry_rewrite(self, code: bytes) -> bytes:
        """What the landing pad becomes once the jump follows it (aarch64: paciasp -> bti c)."""
        return code[:self.landing_pad(code)]
    def padding_length(self, code: bytes) -> int:
        """Leading bytes of `code` that are alignment padding, never executed."""
        return 0
    def branch(self, site: int, target: int, room: int) -> Branch: ...
    def in_branch_reach(self, site: int, target: int) -> bool: ...
    def stub(self, stub_addr: int, slot_addr: int) -> bytes: ...
