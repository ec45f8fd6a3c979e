"""x86-64 hardware breakpoints: debug registers DR0-DR3 and DR7, written with PTRACE_POKEUSER.

An execution breakpoint (R/W = 00, LEN = 00) in DR0 enabled locally (L0):
the thread stops with SIGTRAP before executing the instruction at the
address, rip on it. Debug registers are per thread: no other thread sees it.
"""

USER_DEBUGREG = 848            # offsetof(struct user, u_debugreg) on x86-64
DR0, DR6, DR7 = (USER_DEBUGREG + 8 * n for n in (0, 6, 7))
DR7_L0 = 1                     # local enable of DR0; R/W0 and LEN0 (bits 16-19) zero: execution


def breakpoint_writes(address: int) -> list[tuple[str, int, object]]:
    """("user", offset, value) writes that arm an execution breakpoint at `address`."""
    return [("user", DR7, 0), ("user", DR0, address), ("user", DR6, 0), ("user", DR7, DR7_L0)]


def clear_writes() -> list[tuple[str, int, object]]:
    return [("user", DR7, 0), ("user", DR6, 0), ("user", DR0, 0)]
