"""One exception tree; each class carries the exit code the CLI reports.

The codes are the contract of the command line (README, --help): scripts and
tests depend on them, so a code never changes meaning.
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_BUSY = 3
EXIT_MISMATCH = 4
EXIT_TRACE = 5
EXIT_INVALID = 6
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_INTERNAL: "internal error (a bug: please report it)",
    EXIT_USAGE: "usage error",
    EXIT_BUSY: "target busy: a thread stayed inside a function to replace until --timeout",
    EXIT_MISMATCH: "patch does not match the target (build-id, code, or binary not loaded)",
    EXIT_TRACE: "cannot trace the process (gone, permission, ptrace_scope, seccomp)",
    EXIT_INVALID: "invalid patch or patch source",
    EXIT_INTERRUPTED: "interrupted (SIGINT, SIGTERM, SIGHUP): what was done is undone",
}


class HotpatchError(Exception):
    """Root of every error hotpatch reports; `str()` is the one line shown."""

    exit_code = EXIT_INTERNAL
    kind = "internal"

    def __init__(self, message: str, remedy: str | None = None):
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def line(self) -> str:
        """One printable line: names from a hostile patch file cannot break it or drive a terminal."""
        text = f"{self.message}; {self.remedy}" if self.remedy else self.message
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UsageError(HotpatchError):
    exit_code = EXIT_USAGE
    kind = "usage"


class TargetBusy(HotpatchError):
    exit_code = EXIT_BUSY
    kind = "busy"


class PatchMismatch(HotpatchError):
    exit_code = EXIT_MISMATCH
    kind = "mismatch"


class TraceError(HotpatchError):
    exit_code = EXIT_TRACE
    kind = "trace"


class TargetGone(TraceError):
    kind = "gone"


class InvalidPatch(HotpatchError):
    exit_code = EXIT_INVALID
    kind = "invalid"


class SymbolNotFound(InvalidPatch):
    kind = "symbol-not-found"


class AmbiguousSymbol(InvalidPatch):
    kind = "ambiguous-symbol"


class RelocationError(InvalidPatch):
    kind = "relocation"


class FunctionTooShort(InvalidPatch):
    kind = "function-too-short"
