"""The one exception tree: every error hotpatch raises is defined here.

Each class carries the exit code the CLI reports; each code has one meaning.
The codes are the contract of the command line (README, --help): scripts and
tests depend on them, so a code never changes meaning. Lower errors (OSError,
pyelftools, ptrace) are wrapped where they enter, with `raise ... from e`.
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_BUSY = 3
EXIT_MISMATCH = 4
EXIT_TRACE = 5
EXIT_INVALID = 6
EXIT_UNDO_FAILED = 7
EXIT_REFUSED = 8
EXIT_UNTRUSTED = 9
EXIT_PARTIAL = 10
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_INTERNAL: "internal error (a bug: please report it)",
    EXIT_USAGE: "usage error",
    EXIT_BUSY: "process busy: a thread stayed inside a function to replace until --timeout",
    EXIT_MISMATCH: "patch does not match the process (build-id, code, or binary not loaded)",
    EXIT_TRACE: "cannot trace the process (gone, permission, ptrace_scope, seccomp, frozen)",
    EXIT_INVALID: "invalid patch or patch source",
    EXIT_UNDO_FAILED: "a failure, and undoing it failed too: the process may be damaged",
    EXIT_REFUSED: "the kernel refused a system call made in the process (out of memory, limits)",
    EXIT_UNTRUSTED: "the patch is not signed by a trusted key (or the trust settings are unsafe)",
    EXIT_PARTIAL: "--all-processes: some processes were not patched (each one's reason in the summary)",
    EXIT_INTERRUPTED: "interrupted (SIGINT, SIGTERM, SIGHUP): what was done is undone",
}


def printable(text: str) -> str:
    """Names read from a process or a patch file, made safe for a terminal: no escapes, no line breaks."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class HotpatchError(Exception):
    """Root of every error hotpatch reports; `line()` is the one line shown."""

    exit_code = EXIT_INTERNAL
    kind = "internal"

    def __init__(self, message: str, remedy: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.remedy = remedy
        self.details = details or {}   # the evidence, for --json (a busy thread's backtrace)

    def line(self) -> str:
        """One printable line: names from a hostile patch file cannot break it or drive a terminal."""
        text = f"{self.message}; {self.remedy}" if self.remedy else self.message
        return printable(text)


# -- usage and input ----------------------------------------------------------

class UsageError(HotpatchError):
    exit_code = EXIT_USAGE
    kind = "usage"


class InvalidPatch(HotpatchError):
    exit_code = EXIT_INVALID
    kind = "invalid"


class ELFFormatError(InvalidPatch):
    """Bytes that are not an ELF object of a kind hotpatch understands.

    Raised by the pure ELF readers; callers that read a process's module
    rather than a patch wrap it into the error that fits their input.
    """
    kind = "elf-format"


class SymbolNotFound(InvalidPatch):
    kind = "symbol-not-found"


class AmbiguousSymbol(InvalidPatch):
    kind = "ambiguous-symbol"


class RelocationError(InvalidPatch):
    kind = "relocation"


class FieldOverflow(RelocationError):
    """A value does not fit an instruction or data field: never wrapped silently.

    The linker routes an out-of-range call through a stub, or reports the
    relocation that overflowed.
    """
    kind = "field-overflow"


class FunctionTooShort(InvalidPatch):
    kind = "function-too-short"


class UnsupportedArch(InvalidPatch):
    kind = "unsupported-arch"


# -- the process --------------------------------------------------------------

class Untrusted(HotpatchError):
    exit_code = EXIT_UNTRUSTED


class ProcessBusy(HotpatchError):
    exit_code = EXIT_BUSY
    kind = "busy"


class PatchMismatch(HotpatchError):
    exit_code = EXIT_MISMATCH
    kind = "mismatch"


class TraceError(HotpatchError):
    exit_code = EXIT_TRACE
    kind = "trace"


class ProcessGone(TraceError):
    kind = "gone"


class ThreadGone(ProcessGone):
    """ESRCH from ptrace: one thread exited (or left its ptrace-stop) under us.

    The thread layer handles it (the thread is dropped); it reaches the user
    only when the thread was the one doing work for us.
    """
    kind = "thread-gone"

    def __init__(self, tid: int):
        super().__init__(f"thread {tid} exited")
        self.tid = tid


class SeccompForbidden(TraceError):
    """The filter of the thread hotpatch would use forbids one of its system calls."""
    kind = "seccomp-forbidden"


class SeccompUnverifiable(TraceError):
    """The thread runs under a filter hotpatch cannot read or interpret: it refuses."""
    kind = "seccomp-unverifiable"


class SeccompFilterError(HotpatchError):
    """A BPF program the kernel would not have installed: it cannot be judged, so it forbids.

    Raised by the pure interpreter; the caller turns it into SeccompUnverifiable.
    """
    kind = "seccomp-filter"


class RemoteSyscallError(HotpatchError):
    """A system call made in the process returned an error (mmap ENOMEM, a limit)."""
    exit_code = EXIT_REFUSED
    kind = "syscall-refused"

    def __init__(self, name: str, errno_: int, remedy: str | None = None):
        import os
        super().__init__(f"{name} in the process failed: {os.strerror(errno_)}",
                         remedy or "check the process's limits (ulimit -v, cgroup memory.max, vm.max_map_count)")
        self.name = name
        self.errno = errno_


class RemoteCallError(TraceError):
    """A function called in the process (frame registration) faulted or did not return."""
    kind = "call-failed"


class UndoFailed(HotpatchError):
    exit_code = EXIT_UNDO_FAILED
    kind = "undo-failed"


# -- the operation ------------------------------------------------------------

class Interrupted(HotpatchError):
    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"


class InjectedFault(HotpatchError):
    """HOTPATCH_FAULT (a test hook) failed the operation at a named step."""
    kind = "injected-fault"
