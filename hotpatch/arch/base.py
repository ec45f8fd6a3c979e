"""The interface every architecture implements, and the values it hands back.

Each architecture is a package with the same modules and function names
(registers, syscall, insn, jumps, relocations); its Arch subclass only wires
them together (staticmethods bound to those functions). Nothing here or there looks at the host: the architecture is a
value chosen from an ELF header, so every architecture is testable anywhere.
"""

import abc
import ctypes
from dataclasses import dataclass
from typing import Callable, ClassVar

from hotpatch.arch.reloc import RelocType
from hotpatch.errors import FunctionTooShort


@dataclass(frozen=True)
class Branch:
    """Bytes to write at `site` so that execution continues at `destination`."""

    site: int
    code: bytes
    form: str  # "near", "page" (aarch64 adrp) or "far": which encoding reached


# What the activeness check needs of a stopped thread, a plain tuple (built for every thread in the
# stop): (code pointers: pc first, then registers that may hold a live return address (aarch64 LR);
# sp; an upper bound of its frames, or 2**64: the end of its stack mapping then bounds them).
ThreadView = tuple[tuple[int, ...], int, int]


class Arch(abc.ABC):
    # ELF and kernel facts
    name: ClassVar[str]
    e_machine: ClassVar[int]
    audit_arch: ClassVar[int]                 # AUDIT_ARCH_*: what a seccomp filter sees
    regs_type: ClassVar[type[ctypes.Structure]]  # NT_PRSTATUS layout
    syscall_insn: ClassVar[bytes]
    syscall_insn_align: ClassVar[int]
    syscall_numbers: ClassVar[dict[str, int]]
    returning_syscall: ClassVar[bytes]        # a system call instruction and a return after it
    park_insn: ClassVar[bytes | None]         # an instruction looping on itself; None: the return's own loop
    # linking
    relocations: ClassVar[dict[int, RelocType]]
    got_reloc_types: ClassVar[frozenset[int]]  # dynamic relocations that fill a GOT slot
    dtpmod_reloc_types: ClassVar[frozenset[int]]  # dynamic relocations that fill a TLS module id
    tlsdesc_reloc_types: ClassVar[frozenset[int]]  # dynamic relocations that fill a TLS descriptor
    tlsdesc_return: ClassVar[bytes]                # code returning a descriptor's argument (static TLS)
    stub_size: ClassVar[int]                  # one call stub / veneer through a GOT slot
    # jumps
    branch_reach: ClassVar[int]               # distance the shortest jump reaches: where to place the image
    fallback_reach: ClassVar[int | None]      # a second, longer form worth placing for (aarch64 adrp)
    near_branch_size: ClassVar[int]           # smallest trampoline
    far_branch_size: ClassVar[int]            # trampoline reaching any address
    # toolchain and system layout (Debian multiarch)
    cross_compiler: ClassVar[str]
    library_dirs: ClassVar[tuple[str, ...]]
    # unwinding: registers as a list by DWARF number, the frame's pc in its own slot
    dwarf_registers: ClassVar[int]            # length of that list
    dwarf_sp: ClassVar[int]
    dwarf_pc: ClassVar[int]
    sigreturn_code: ClassVar[bytes]           # the signal return trampoline's instructions
    sigreturn_align: ClassVar[int]

    # -- registers ------------------------------------------------------
    @abc.abstractmethod
    def pc(self, regs) -> int: ...

    @abc.abstractmethod
    def sp(self, regs) -> int: ...

    @abc.abstractmethod
    def thread_view(self, regs) -> ThreadView: ...

    # -- system calls ---------------------------------------------------
    @abc.abstractmethod
    def hijack_for_syscall(self, regs, gadget: int, nr: int, args: list[int]):
        """A copy of `regs` that runs system call `nr` at the instruction at `gadget`."""

    @abc.abstractmethod
    def syscall_result(self, regs) -> int:
        """The return value, negative errno on failure."""

    def after_syscall_insn(self, gadget: int) -> int:
        return gadget + len(self.syscall_insn)

    @abc.abstractmethod
    def hijack_parked(self, regs, gadget: int, park: int, nr: int, args: list[int], journal_size: int):
        """(registers, address, bytes to write there): system call `nr` at `gadget` (a
        returning_syscall) that returns into the loop at `park`, with the thread's stack pointer
        there on a free area of `journal_size` bytes (the caller writes the journal into it)."""

    @abc.abstractmethod
    def parked_journal(self, regs) -> int:
        """The journal's address in the registers of a thread parked that way."""

    # -- code -----------------------------------------------------------
    @abc.abstractmethod
    def landing_pad(self, code: bytes) -> int:
        """Bytes at a function entry that must stay (endbr64, bti c)."""

    @abc.abstractmethod
    def entry_rewrite(self, code: bytes) -> bytes:
        """What the landing pad becomes once the jump follows it, len == landing_pad(code)."""

    @abc.abstractmethod
    def padding_length(self, code: bytes) -> int:
        """Leading bytes of `code` that are alignment padding, never executed."""

    @abc.abstractmethod
    def in_branch_reach(self, site: int, destination: int) -> bool: ...

    @abc.abstractmethod
    def branch(self, site: int, destination: int, room: int) -> Branch:
        """The shortest jump that reaches and fits in `room` bytes, else FunctionTooShort."""

    hop_size: ClassVar[int] = 0               # padding a short function's jump may use before it (0: none)

    def hop_branch(self, entry: int, pad: bytes, destination: int) -> Branch:
        """A jump for a function too short for branch(): in the padding before it, reached by a short one."""
        raise FunctionTooShort(f"no short-function jump on {self.name}")

    def is_hop(self, site: int, entry: int, written: bytes, destination: int) -> bool:
        return False

    @abc.abstractmethod
    def stub(self, stub_addr: int, slot_addr: int) -> bytes:
        """A call stub (veneer) at stub_addr jumping through the GOT slot at slot_addr."""

    # -- calling a function in the process (frame registration only) -------
    trap_insn: ClassVar[bytes]               # a breakpoint instruction: where calls of hotpatch 0.1 returned to
    return_loop: ClassVar[bytes]             # an instruction looping on itself: where such a call returns to

    @abc.abstractmethod
    def hijack_for_call(self, regs, function: int, args: list[int], return_to: int) -> tuple[object, int, bytes]:
        """(registers entering `function` as if called, returning to `return_to`; sp; bytes to write at sp)."""

    @abc.abstractmethod
    def hijack_parked_call(self, regs, function: int, args: list[int], return_to: int,
                           journal_size: int) -> tuple[object, int, bytes]:
        """(registers entering `function` as if called, returning into the loop at `return_to` with the
        stack pointer on `journal_size` free bytes; address; bytes to write there first)."""

    @abc.abstractmethod
    def returned_at(self, regs, return_to: int) -> bool:
        """The thread stopped on the trap at `return_to`."""

    @abc.abstractmethod
    def call_result(self, regs) -> int: ...

    # -- hardware breakpoints (catching a thread as it leaves a function) ---
    @abc.abstractmethod
    def breakpoint_writes(self, address: int) -> list[tuple[str, int, object]]:
        """Writes arming one execution breakpoint in a thread: ("user", offset, value) for
        PTRACE_POKEUSER, or ("regset", note type, bytes) for PTRACE_SETREGSET."""

    @abc.abstractmethod
    def clear_writes(self) -> list[tuple[str, int, object]]:
        """Writes disarming it."""

    # -- unwinding --------------------------------------------------------
    @abc.abstractmethod
    def unwind_registers(self, regs) -> list[int | None]:
        """A stopped thread's registers (the ptrace struct) as a list by DWARF number."""

    @abc.abstractmethod
    def code_address(self, value: int) -> int:
        """A return address from a register or the stack as a pc (aarch64: without its PAC)."""

    @abc.abstractmethod
    def sigframe_registers(self, sp: int, read_word: Callable[[int], int | None]) -> list[int | None] | None:
        """The registers a signal interrupted, from the signal frame at `sp` in the return trampoline."""
