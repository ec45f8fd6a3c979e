"""One thread's real call chain: registers, a stack snapshot and each module's CFI in, frames out.

Pure: the caller captures the thread (registers, the stack bytes from sp up)
and maps pcs to modules (CodeMap does it from the executable mappings and
their CallFrameTables); nothing here touches a process.

The kernel livepatch rule applies: a walk that cannot be completed reliably
says so, with why and where, and the caller counts the thread as busy. It is
never a guess: no CFI for a pc, a CFA that does not grow, a read outside the
snapshot, a pc in no mapping, an expression this evaluator does not know, all
end the walk as unreliable. A walk ends reliably at the outermost frame (the
return address is undefined in the CFI, as in _start and the thread start in
clone, or 0), or as soon as its CFA is above `stop_above`: every frame beyond
keeps its return address at or above that CFA, so above the caller's highest
candidate word.

The first frame's pc is exact; a caller's pc is a return address, looked up at
pc - 1 (a call may be the last instruction of a function). A frame the kernel
made for a signal handler is recognised by the return trampoline's instruction
bytes (Arch.sigreturn_code) and the interrupted registers are read from the
signal frame; the interrupted pc is exact again.
"""

import bisect
import struct
from typing import Callable, NamedTuple

from hotpatch.arch.base import Arch
from hotpatch.elf.cfi import (
    EXPRESSION,
    OFFSET,
    REGISTER,
    SAME_VALUE,
    UNDEFINED,
    VAL_EXPRESSION,
    VAL_OFFSET,
    CallFrameTable,
    FrameRule,
)
from hotpatch.errors import ELFFormatError

U64 = (1 << 64) - 1
MAX_FRAMES = 512
MAX_EXPRESSION_STEPS = 1000

# How a walk ends. Reliable:
OUTERMOST = "outermost frame"           # the return address is undefined (or 0)
BOUND = "above the bound"               # the CFA passed stop_above
# Unreliable (the kernel's "unreliable stack"):
NO_CFI = "no CFI"
NOT_MAPPED = "outside any mapping"
LOOP = "CFA not increasing"
OUTSIDE_SNAPSHOT = "read outside the stack snapshot"
UNSUPPORTED_EXPRESSION = "unsupported DWARF expression"
UNKNOWN_REGISTER = "register value unknown"
RA_NOT_SAVED = "return address not saved"
BAD_CFI = "corrupt CFI"
TOO_DEEP = "too many frames"

# What find_rule(address) may answer besides a FrameRule, or None for "no CFI there" (compared by identity):
OUTSIDE = FrameRule(-2, 0, None, (), -1, False)     # the address is in no mapping the caller knows
SIGRETURN = FrameRule(-3, 0, None, (), -1, True)    # a signal return trampoline

RuleFinder = Callable[[int], "FrameRule | None"]
WordReader = Callable[[int], "int | None"]


class Frame(NamedTuple):
    pc: int
    cfa: int | None   # None: the walk stopped before computing it (its last frame)
    signal: bool      # a signal return trampoline: the next frame is the one the signal interrupted


class Walk(NamedTuple):
    frames: list[Frame]   # innermost first
    reliable: bool
    end: str              # OUTERMOST or BOUND when reliable, else why not
    address: int          # where it stopped: the pc, the address read, the CFA
    detail: str = ""

    def why(self) -> str:
        """One line: 'no CFI at 0x7f.. (frame 3)'."""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.end} at {self.address:#x} (frame {max(len(self.frames) - 1, 0)}){detail}"


class _Stop(Exception):
    def __init__(self, end: str, address: int, detail: str = ""):
        super().__init__(end)
        self.end, self.address, self.detail = end, address, detail


def stack_reader(data: bytes | bytearray | memoryview, base: int, offset: int = 0,
                 size: int | None = None) -> WordReader:
    """read_word over a snapshot: data[offset:offset + size] holds the stack's bytes from address `base`."""
    if size is None:
        size = len(data) - offset
    unpack_from = struct.Struct("<Q").unpack_from
    lo, hi, delta = base, base + size - 8, offset - base

    def read_word(address: int) -> int | None:
        if lo <= address <= hi:
            return unpack_from(data, address + delta)[0]
        return None
    return read_word


def unwind(arch: Arch, regs, read_word: WordReader, find_rule: RuleFinder, stop_above: int | None = None,
           max_frames: int = MAX_FRAMES) -> Walk:
    """Walk a stopped thread from its registers (the ptrace struct: user_regs_struct, user_pt_regs).

    read_word(address) -> the 8-byte little-endian word there, None outside the snapshot;
    find_rule(address) -> the FrameRule at an absolute address, None (no CFI), OUTSIDE or SIGRETURN
    (CodeMap.find_rule); stop_above: stop, reliably, once a frame's CFA is above it.
    """
    return unwind_registers(arch, arch.unwind_registers(regs), read_word, find_rule, stop_above, max_frames)


def unwind_registers(arch: Arch, registers: list[int | None], read_word: WordReader, find_rule: RuleFinder,
                     stop_above: int | None = None, max_frames: int = MAX_FRAMES) -> Walk:
    """unwind() from registers already listed by DWARF number (Arch.unwind_registers)."""
    sp_slot, pc_slot, count = arch.dwarf_sp, arch.dwarf_pc, arch.dwarf_registers
    code_address, sigframe = arch.code_address, arch.sigframe_registers
    new_frame = tuple.__new__   # Frame(...) without NamedTuple's Python-level __new__: a third of a frame's cost
    regs = list(registers)
    pc = regs[pc_slot]
    if pc is None:
        return Walk([], False, UNKNOWN_REGISTER, 0, "pc")
    frames: list[Frame] = []
    exact = True          # the first pc, and one a signal interrupted, is not a return address
    # CFAs grow from frame to frame (not checked across a signal frame: a handler may run on another stack).
    # Equal is allowed to the outermost frame only: aarch64's thread_start and _start call without a frame
    # of their own (the CFA is the sp at entry, no return address is pushed) and never return.
    last_cfa = -1
    while True:
        if len(frames) >= max_frames:
            return Walk(frames, False, TOO_DEEP, pc, f"more than {max_frames}")
        try:
            rule = find_rule(pc if exact else pc - 1)
        except ELFFormatError as e:
            frames.append(new_frame(Frame, (pc, None, False)))
            return Walk(frames, False, BAD_CFI, pc, e.message)
        if rule is None:
            frames.append(new_frame(Frame, (pc, None, False)))
            return Walk(frames, False, NO_CFI, pc)
        if rule is OUTSIDE:
            frames.append(new_frame(Frame, (pc, None, False)))
            return Walk(frames, False, NOT_MAPPED, pc)
        if rule is SIGRETURN:
            sp = regs[sp_slot]
            if sp is None:
                frames.append(new_frame(Frame, (pc, None, True)))
                return Walk(frames, False, UNKNOWN_REGISTER, pc, f"r{sp_slot}")
            frames.append(new_frame(Frame, (pc, sp, True)))
            interrupted = sigframe(sp, read_word)
            if interrupted is None:
                return Walk(frames, False, OUTSIDE_SNAPSHOT, sp, "signal frame")
            regs = interrupted
            pc = regs[pc_slot]
            if pc is None:
                return Walk(frames, False, UNKNOWN_REGISTER, sp, "interrupted pc")
            exact, last_cfa = True, -1
            continue
        try:
            # The CFA, from the callee's registers.
            base = rule.cfa_register
            if base >= 0:
                value = regs[base] if base < count else None
                if value is None:
                    raise _Stop(UNKNOWN_REGISTER, pc, f"r{base} (CFA base)")
                cfa = (value + rule.cfa_offset) & U64
            else:
                assert rule.cfa_expression is not None
                cfa = evaluate(rule.cfa_expression, regs, read_word, None, pc)
            frames.append(new_frame(Frame, (pc, cfa, rule.signal_frame)))
            if cfa < last_cfa:
                return Walk(frames, False, LOOP, cfa)
            # The caller's registers: the CFA is its sp unless a rule says otherwise.
            caller = regs.copy()
            caller[sp_slot] = cfa
            ra_column = rule.return_column
            ra_recovered = exact
            for reg, how, arg in rule.saved:
                if reg >= count:
                    continue      # vector registers: not tracked
                if reg == ra_column and how != SAME_VALUE:
                    ra_recovered = True
                if how == OFFSET:
                    address = (cfa + arg) & U64     # type: ignore[operator]
                    value = read_word(address)
                    if value is None:
                        raise _Stop(OUTSIDE_SNAPSHOT, address, f"r{reg} saved by pc {pc:#x}")
                    caller[reg] = value
                elif how == VAL_OFFSET:
                    caller[reg] = (cfa + arg) & U64     # type: ignore[operator]
                elif how == REGISTER:
                    caller[reg] = regs[arg] if arg < count else None     # type: ignore[operator,index]
                elif how == UNDEFINED:
                    caller[reg] = None
                elif how == EXPRESSION:
                    address = evaluate(arg, regs, read_word, cfa, pc)     # type: ignore[arg-type]
                    value = read_word(address)
                    if value is None:
                        raise _Stop(OUTSIDE_SNAPSHOT, address, f"r{reg} saved by pc {pc:#x}")
                    caller[reg] = value
                elif how == VAL_EXPRESSION:
                    caller[reg] = evaluate(arg, regs, read_word, cfa, pc)     # type: ignore[arg-type]
        except _Stop as stop:
            return Walk(frames, False, stop.end, stop.address, stop.detail)
        if ra_column >= count:
            return Walk(frames, False, UNKNOWN_REGISTER, pc, f"return address column r{ra_column}")
        ra = caller[ra_column]
        if ra is None or ra == 0:
            return Walk(frames, True, OUTERMOST, pc)
        if cfa == last_cfa:
            return Walk(frames, False, LOOP, cfa)
        if not ra_recovered:
            # A caller (not the first frame, not one a signal interrupted) stopped at a call: the call
            # overwrote the link register, so its CFI must say where the return address went.
            return Walk(frames, False, RA_NOT_SAVED, pc)
        pc = code_address(ra)
        caller[pc_slot] = pc
        if stop_above is not None and cfa > stop_above and not rule.signal_frame:
            frames.append(new_frame(Frame, (pc, None, False)))
            return Walk(frames, True, BOUND, cfa)
        regs, exact = caller, rule.signal_frame
        last_cfa = -1 if exact else cfa


# -- DWARF expressions (DWARF 5, 2.5): the operations CFI uses --------------------------------------------

def _signed(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


def _leb(expr: bytes, pos: int, signed: bool) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(expr):
            raise _Stop(UNSUPPORTED_EXPRESSION, 0, "truncated LEB128")
        byte = expr[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if signed and byte & 0x40:
        value -= 1 << shift
    return value, pos


_CONSTS = {0x08: "<B", 0x09: "<b", 0x0A: "<H", 0x0B: "<h", 0x0C: "<I", 0x0D: "<i", 0x0E: "<Q", 0x0F: "<q"}
_BINARY = {
    0x1A: lambda a, b: a & b,                                   # and
    0x1C: lambda a, b: a - b,                                   # minus
    0x1E: lambda a, b: a * b,                                   # mul
    0x21: lambda a, b: a | b,                                   # or
    0x22: lambda a, b: a + b,                                   # plus
    0x24: lambda a, b: a << b if b < 64 else 0,                 # shl
    0x25: lambda a, b: a >> b,                                  # shr
    0x26: lambda a, b: _signed(a) >> min(b, 63),                # shra
    0x27: lambda a, b: a ^ b,                                   # xor
    0x29: lambda a, b: int(_signed(a) == _signed(b)),           # eq
    0x2A: lambda a, b: int(_signed(a) >= _signed(b)),           # ge
    0x2B: lambda a, b: int(_signed(a) > _signed(b)),            # gt
    0x2C: lambda a, b: int(_signed(a) <= _signed(b)),           # le
    0x2D: lambda a, b: int(_signed(a) < _signed(b)),            # lt
    0x2E: lambda a, b: int(_signed(a) != _signed(b)),           # ne
}


def evaluate(expr: bytes, regs: list[int | None], read_word: WordReader, push: int | None, pc: int = 0) -> int:
    """The value of a DWARF expression over a frame's registers and the stack snapshot.

    `push` is pushed first (the CFA, for DW_CFA_expression and val_expression).
    Raises _Stop for anything it cannot evaluate exactly: an operation outside
    those CFI uses, a register without a value, a read outside the snapshot.
    """
    stack: list[int] = [] if push is None else [push]
    pos, steps, size = 0, 0, len(expr)

    def pop() -> int:
        if not stack:
            raise _Stop(UNSUPPORTED_EXPRESSION, pc, "stack underflow")
        return stack.pop()

    def register(n: int) -> int:
        value = regs[n] if n < len(regs) else None
        if value is None:
            raise _Stop(UNKNOWN_REGISTER, pc, f"r{n} in an expression")
        return value

    while pos < size:
        steps += 1
        if steps > MAX_EXPRESSION_STEPS:
            raise _Stop(UNSUPPORTED_EXPRESSION, pc, "does not terminate")
        op = expr[pos]
        pos += 1
        if 0x30 <= op <= 0x4F:                      # lit0..lit31
            stack.append(op - 0x30)
        elif 0x70 <= op <= 0x8F:                    # breg0..breg31
            offset, pos = _leb(expr, pos, True)
            stack.append((register(op - 0x70) + offset) & U64)
        elif op == 0x92:                            # bregx
            n, pos = _leb(expr, pos, False)
            offset, pos = _leb(expr, pos, True)
            stack.append((register(n) + offset) & U64)
        elif op in _BINARY:
            b, a = pop(), pop()
            stack.append(_BINARY[op](a, b) & U64)
        elif op == 0x23:                            # plus_uconst
            n, pos = _leb(expr, pos, False)
            stack.append((pop() + n) & U64)
        elif op in _CONSTS:                         # const1u .. const8s
            form = _CONSTS[op]
            width = struct.calcsize(form)
            if pos + width > size:
                raise _Stop(UNSUPPORTED_EXPRESSION, pc, "truncated constant")
            stack.append(struct.unpack_from(form, expr, pos)[0] & U64)
            pos += width
        elif op == 0x10 or op == 0x11:              # constu, consts
            n, pos = _leb(expr, pos, op == 0x11)
            stack.append(n & U64)
        elif op == 0x06 or op == 0x94:              # deref, deref_size
            width = 8
            if op == 0x94:
                if pos >= size or not 1 <= expr[pos] <= 8:
                    raise _Stop(UNSUPPORTED_EXPRESSION, pc, "bad DW_OP_deref_size")
                width = expr[pos]
                pos += 1
            address = pop()
            value = read_word(address)
            if value is None:
                raise _Stop(OUTSIDE_SNAPSHOT, address, "in an expression")
            stack.append(value & ((1 << (8 * width)) - 1))
        elif op == 0x12:                            # dup
            stack.append(stack[-1] if stack else pop())
        elif op == 0x13:                            # drop
            pop()
        elif op == 0x14:                            # over
            if len(stack) < 2:
                raise _Stop(UNSUPPORTED_EXPRESSION, pc, "stack underflow")
            stack.append(stack[-2])
        elif op == 0x15:                            # pick
            if pos >= size or expr[pos] >= len(stack):
                raise _Stop(UNSUPPORTED_EXPRESSION, pc, "bad DW_OP_pick")
            stack.append(stack[-1 - expr[pos]])
            pos += 1
        elif op == 0x16:                            # swap
            b, a = pop(), pop()
            stack += [b, a]
        elif op == 0x17:                            # rot
            c, b, a = pop(), pop(), pop()
            stack += [c, a, b]
        elif op == 0x19:                            # abs
            stack.append(abs(_signed(pop())) & U64)
        elif op == 0x1F:                            # neg
            stack.append(-_signed(pop()) & U64)
        elif op == 0x20:                            # not
            stack.append(~pop() & U64)
        elif op == 0x1B or op == 0x1D:              # div (signed), mod
            b, a = pop(), pop()
            if b == 0:
                raise _Stop(UNSUPPORTED_EXPRESSION, pc, "division by zero")
            if op == 0x1B:
                q = abs(_signed(a)) // abs(_signed(b))
                stack.append((q if (_signed(a) < 0) == (_signed(b) < 0) else -q) & U64)
            else:
                stack.append(a % b)
        elif op == 0x2F or op == 0x28:              # skip, bra
            if pos + 2 > size:
                raise _Stop(UNSUPPORTED_EXPRESSION, pc, "truncated branch")
            offset = struct.unpack_from("<h", expr, pos)[0]
            pos += 2
            if op == 0x2F or pop() != 0:
                pos += offset
                if not 0 <= pos <= size:
                    raise _Stop(UNSUPPORTED_EXPRESSION, pc, "branch outside the expression")
        elif op == 0x96:                            # nop
            pass
        else:
            raise _Stop(UNSUPPORTED_EXPRESSION, pc, f"DW_OP {op:#04x}")
    if not stack:
        raise _Stop(UNSUPPORTED_EXPRESSION, pc, "empty result")
    return stack[-1]


# -- where each pc's rule comes from ---------------------------------------------------------------------

class _Range(NamedTuple):
    start: int
    end: int
    table: CallFrameTable | None
    bias: int


class CodeMap:
    """The executable ranges of a process, each with its module's CFI: unwind()'s find_rule.

    add() every executable mapping: a module's with its CallFrameTable and load
    bias, code without CFI (anonymous executable memory, a JIT) with None. An
    address in no range added is OUTSIDE; a signal return trampoline (by its
    bytes, read from the module's table) is SIGRETURN. Answers are kept per
    address: a warm lookup is one dict hit. Tables are prepared by add().
    """

    def __init__(self, arch: Arch):
        self.arch = arch
        self._starts: list[int] = []
        self._ranges: list[_Range] = []
        self._cache: dict[int, FrameRule | None] = {}

    def add(self, start: int, end: int, table: CallFrameTable | None, bias: int = 0) -> None:
        if table is not None:
            table.prepare()
        i = bisect.bisect_right(self._starts, start)
        self._starts.insert(i, start)
        self._ranges.insert(i, _Range(start, end, table, bias))
        self._cache.clear()

    def find_rule(self, address: int) -> FrameRule | None:
        try:
            return self._cache[address]
        except KeyError:
            pass
        rule = self._resolve(address)
        self._cache[address] = rule
        return rule

    def _resolve(self, address: int) -> FrameRule | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0 or address >= self._ranges[i].end:
            return OUTSIDE
        r = self._ranges[i]
        if r.table is None:
            return None
        link = address - r.bias
        if self._in_sigreturn(r.table, link):
            return SIGRETURN
        return r.table.lookup(link)

    def _in_sigreturn(self, table: CallFrameTable, address: int) -> bool:
        """Is `address` in the trampoline, or the byte before it (a return address into it, minus one)?"""
        code, align = self.arch.sigreturn_code, self.arch.sigreturn_align
        lo = max(address - len(code) + 1, 0)
        window = table.read_code(lo, 2 * len(code))
        pos = window.find(code)
        while pos >= 0:
            start = lo + pos
            if start % align == 0 and start - 1 <= address < start + len(code):
                return True
            pos = window.find(code, pos + 1)
        return False
