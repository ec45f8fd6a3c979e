"""AArch64 hardware breakpoints: the NT_ARM_HW_BREAK regset (struct user_hwdebug_state).

Slot 0 holds the address and a control word: enabled, EL0 only, byte
address select 0b1111 (an A64 instruction). The thread stops with SIGTRAP
before executing the instruction there, pc on it. Per thread.
"""

import struct

NT_ARM_HW_BREAK = 0x402
HWDEBUG_HEADER = struct.Struct("<II")      # dbg_info, pad (ignored on write)
HWDEBUG_SLOT = struct.Struct("<QII")       # addr, ctrl, pad
CTRL_ENABLE, CTRL_EL0, CTRL_BAS_A64 = 1, 2 << 1, 0xF << 5


def breakpoint_writes(address: int) -> list[tuple[str, int, object]]:
    """("regset", NT_ARM_HW_BREAK, bytes) arming slot 0 at `address`."""
    return [("regset", NT_ARM_HW_BREAK, HWDEBUG_HEADER.pack(0, 0) +
             HWDEBUG_SLOT.pack(address, CTRL_ENABLE | CTRL_EL0 | CTRL_BAS_A64, 0))]


def clear_writes() -> list[tuple[str, int, object]]:
    return [("regset", NT_ARM_HW_BREAK, HWDEBUG_HEADER.pack(0, 0) + HWDEBUG_SLOT.pack(0, 0, 0))]
