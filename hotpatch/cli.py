"""Command line: `hotpatch PID PATCHFILE` and its sub-commands.

Every failure ends in one line on stderr (or one JSON object with --json) and
a documented exit code; a traceback is shown only with HOTPATCH_DEBUG=1.
"""

import argparse
import json
import math
import os
import sys
import traceback

from hotpatch import __version__
from hotpatch.errors import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_PARTIAL,
    EXIT_UNDO_FAILED,
    EXIT_USAGE,
    HotpatchError,
    UsageError,
    printable,
)

EPILOG = "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())
COMMANDS = ("apply", "build", "list", "revert", "gc", "info", "sign", "status", "install", "uninstall", "daemon",
            "demo")


MAX_TIMEOUT = 24 * 3600.0


def timeout_seconds(text: str) -> float:
    """--timeout: a finite number of seconds, above 0 and at most a day."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and {MAX_TIMEOUT:g} seconds")
    return value


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}", f"see `{self.prog} -h`")


def make_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = Parser(prog="hotpatch", description="Live-patch functions of a running process.\n\n"
               "  hotpatch PID PATCHFILE          is  hotpatch apply PID PATCHFILE",
               epilog=EPILOG, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"hotpatch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    a = sub.add_parser("apply", help="apply a patch to a running process, or to every process of the host "
                       "that maps its binary", epilog=EPILOG, formatter_class=fmt,
                       usage="hotpatch apply (PID | --all-processes) PATCHFILE [options]")
    a.add_argument("operands", nargs="+", metavar="PID PATCHFILE")
    a.add_argument("--all-processes", action="store_true",
                   help="every process that maps the patch's binary (by build-id, containers included)")
    a.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1),
                   help="with --all-processes: processes patched at once (default: CPUs, at most 8)")
    a.add_argument("--name", metavar="COMM", help="with --all-processes: only processes of that name (as ps shows)")
    a.add_argument("--timeout", type=timeout_seconds, default=10.0,
                   help="seconds to wait for threads to leave the functions to replace (default 10)")
    a.add_argument("--dry-run", action="store_true", help="check everything, change nothing")
    a.add_argument("--trust", metavar="ALLOWED_SIGNERS", help="OpenSSH allowed-signers file; when it exists "
                   "(default /etc/hotpatch/allowed_signers, or $HOTPATCH_TRUST) only patches signed by a key in it "
                   "are applied")
    a.add_argument("--json", action="store_true")

    b = sub.add_parser("build", help="compile patch sources for a binary", epilog=EPILOG,
                       formatter_class=fmt)
    b.add_argument("sources", nargs="*", metavar="SOURCE.c")
    b.add_argument("--diff", action="append", default=[], metavar="FIX.patch",
                   help="build the patch from a fix: unified diff(s) against --source")
    b.add_argument("--source", metavar="SRCDIR", help="with --diff: the source the binary was built from")
    b.add_argument("--build", metavar="COMMAND", help="with --diff: the project's build command "
                   "(default: recognised from Makefile, configure, CMakeLists.txt, meson.build)")
    b.add_argument("--strip", type=int, default=1, metavar="N", help="with --diff: as patch -pN (default 1)")
    b.add_argument("--keep-tree", metavar="DIR", help="with --diff: build in DIR and keep it")
    b.add_argument("--orig", metavar="OLDDIR", help="instead of --diff: the source the binary was built from")
    b.add_argument("--patched", metavar="NEWDIR", help="with --orig: the same source with the fix")
    b.add_argument("--target", required=True, metavar="BINARY", help="the binary the process runs")
    b.add_argument("-o", "--output", required=True, help="patch file to write")
    b.add_argument("--cflags", default="", help="extra compiler flags (compiler: $CC, default gcc)")
    b.add_argument("--pick", action="append", default=[], metavar="NAME=FILE.c",
                   help="choose among file-local symbols of the same name")
    b.add_argument("--json", action="store_true")

    ls = sub.add_parser("list", help="patches applied to a process", epilog=EPILOG, formatter_class=fmt)
    ls.add_argument("pid", type=int)
    ls.add_argument("--json", action="store_true")

    r = sub.add_parser("revert", help="undo the newest patch (or one, or all; or one patch everywhere)",
                       epilog=EPILOG, formatter_class=fmt,
                       usage="hotpatch revert (PID [PATCH_ID] | --all-processes PATCHFILE|PATCH_NAME) [options]")
    r.add_argument("operands", nargs="+", metavar="PID [PATCH_ID]",
                   help="the process, and the patch to revert (default: the newest)")
    r.add_argument("--all-processes", action="store_true",
                   help="revert PATCHFILE (or the patch applied under PATCH_NAME) in every process carrying it")
    r.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1),
                   help="with --all-processes: processes reverted at once")
    r.add_argument("--all", action="store_true", help="revert every patch, newest first")
    r.add_argument("--timeout", type=timeout_seconds, default=10.0,
                   help="seconds to wait for threads to leave the patches' code (default 10)")
    r.add_argument("--json", action="store_true")

    g = sub.add_parser("gc", help="free the images of reverted patches once nothing points into them",
                       epilog=EPILOG, formatter_class=fmt)
    g.add_argument("pid", type=int)
    g.add_argument("--timeout", type=timeout_seconds, default=10.0,
                   help="seconds to wait for threads to leave the images (default 10)")
    g.add_argument("--json", action="store_true")

    st = sub.add_parser("status", help="host-wide: which processes carry which patches, and which map a "
                        "patched binary without its patch", epilog=EPILOG, formatter_class=fmt)
    st.add_argument("--patch", metavar="PATCHFILE", help="only this patch: who carries it, who maps its binary "
                    "without it")
    st.add_argument("--json", action="store_true")

    ins = sub.add_parser("install", help="install a signed patch for the daemon (PATCHFILE.sig beside it)",
                         epilog=EPILOG, formatter_class=fmt)
    ins.add_argument("patch")
    ins.add_argument("--patch-dir", default="/var/lib/hotpatch/patches", metavar="DIR")
    ins.add_argument("--trust", metavar="ALLOWED_SIGNERS")
    ins.add_argument("--json", action="store_true")
    un = sub.add_parser("uninstall", help="revert an installed patch everywhere and stop applying it",
                        epilog=EPILOG, formatter_class=fmt)
    un.add_argument("patch", metavar="PATCH_NAME")
    un.add_argument("--patch-dir", default="/var/lib/hotpatch/patches", metavar="DIR")
    un.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1))
    un.add_argument("--timeout", type=timeout_seconds, default=10.0)
    un.add_argument("--json", action="store_true")
    dm = sub.add_parser("daemon", help="keep every process patched with the installed patches, new ones too",
                        epilog=EPILOG, formatter_class=fmt)
    dm.add_argument("--patch-dir", default="/var/lib/hotpatch/patches", metavar="DIR")
    dm.add_argument("--trust", metavar="ALLOWED_SIGNERS", help="default /etc/hotpatch/allowed_signers; required")
    dm.add_argument("--interval", type=timeout_seconds, default=5.0, help="seconds between polls of /proc")
    dm.add_argument("--timeout", type=timeout_seconds, default=10.0)
    dm.add_argument("--once", action="store_true", help="one pass, then exit")

    sg = sub.add_parser("sign", help="sign a patch file with an OpenSSH key (writes PATCHFILE.sig)", epilog=EPILOG,
                        formatter_class=fmt)
    sg.add_argument("patch")
    sg.add_argument("--key", required=True, metavar="SSH_PRIVATE_KEY")
    sg.add_argument("--json", action="store_true")

    i = sub.add_parser("info", help="describe a patch file", epilog=EPILOG, formatter_class=fmt)
    i.add_argument("patch")
    i.add_argument("--resolve", type=int, metavar="PID",
                   help="also where each name the patch uses binds in process PID, and why (read only)")
    i.add_argument("--json", action="store_true")

    sub.add_parser("demo", help="patch a bundled demo program live, then revert", epilog=EPILOG,
                   formatter_class=fmt)
    return p


def normalise_argv(argv: list[str]) -> list[str]:
    if argv and argv[0].lstrip("-").isdigit() and argv[0] not in COMMANDS:
        argv = ["apply", *argv]
    # `--cflags "-O1 -g"`: argparse would take the value for an option of its own.
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--cflags" and i + 1 < len(argv):
            out.append(f"--cflags={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


MUTATING = ("apply", "revert", "gc", "list")   # list repairs what an interrupted run left


def main(argv: list[str] | None = None) -> int:
    argv = normalise_argv(list(sys.argv[1:] if argv is None else argv))
    if argv and argv[0] in MUTATING:
        # First of all: from here a termination request is a flag the
        # transaction honours at a safe point, never an exception anywhere.
        from hotpatch.steps import install_termination_handlers
        install_termination_handlers()
    want_json = "--json" in argv
    try:
        args = make_parser().parse_args(argv)
    except HotpatchError as e:
        return fail(e.exit_code, e.kind, e.line(), want_json, e.details)
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "interrupted", "interrupted by SIGINT", want_json)
    if args.command is None:
        make_parser().print_help()
        return EXIT_USAGE
    if args.command in ("apply", "revert"):
        try:
            (_apply_operands if args.command == "apply" else _revert_operands)(args)
        except HotpatchError as e:
            return fail(e.exit_code, e.kind, e.line(), want_json, e.details)
    if args.command not in MUTATING:
        return guarded(args, want_json)
    from hotpatch.executor import ExecutorKilled, run_detached
    try:
        return run_detached(lambda: guarded(args, want_json))
    except ExecutorKilled as e:
        return fail(EXIT_UNDO_FAILED, "executor-killed",
                    f"{e}; the transaction may be incomplete: `hotpatch list {args.pid or 'PID'}` shows the process's "
                    "state, and the next hotpatch run on it completes or undoes what was left", want_json)


def _apply_operands(args) -> None:
    """PID PATCHFILE, or --all-processes PATCHFILE."""
    if args.all_processes:
        if len(args.operands) != 1:
            raise UsageError("apply --all-processes takes the patch file only")
        args.pid, args.patch = None, args.operands[0]
        return
    if len(args.operands) != 2 or not args.operands[0].lstrip("-").isdigit():
        raise UsageError("apply takes PID PATCHFILE (or --all-processes PATCHFILE)")
    if args.name:
        raise UsageError("--name selects among --all-processes")
    args.pid, args.patch = int(args.operands[0]), args.operands[1]


def _revert_operands(args) -> None:
    """PID [PATCH_ID], or --all-processes PATCHFILE|PATCH_NAME."""
    if args.all_processes:
        if len(args.operands) != 1 or args.all:
            raise UsageError("revert --all-processes takes one patch file or patch name")
        args.pid, args.patch_id, args.patch = None, None, args.operands[0]
        return
    ops = args.operands
    if not 1 <= len(ops) <= 2 or not all(o.lstrip("-").isdigit() for o in ops):
        raise UsageError("revert takes PID [PATCH_ID] (or --all-processes PATCHFILE)")
    args.pid, args.patch_id = int(ops[0]), int(ops[1]) if len(ops) > 1 else None


def guarded(args, want_json: bool) -> int:
    """run(args): every failure one line and its exit code."""
    try:
        return run(args)
    except HotpatchError as e:
        if os.environ.get("HOTPATCH_DEBUG"):
            traceback.print_exc()   # where a refusal came from, for a bug report
        return fail(e.exit_code, e.kind, e.line(), want_json, e.details)
    except KeyboardInterrupt:   # before the handlers are installed: nothing was changed yet
        return fail(EXIT_INTERRUPTED, "interrupted", "interrupted by SIGINT", want_json)
    except Exception as e:  # a bug: still one line, never a half-printed traceback
        if os.environ.get("HOTPATCH_DEBUG"):
            raise
        return fail(EXIT_INTERNAL, "internal", f"internal error: {type(e).__name__}: {e} "
                    "(set HOTPATCH_DEBUG=1 for a traceback)", want_json)


def fail(code: int, kind: str, line: str, want_json: bool, details: dict | None = None) -> int:
    try:
        if want_json:
            print(json.dumps({"status": "error", "error": kind, "message": line, "exit_code": code,
                              **(details or {})}), flush=True)
        else:
            print(f"hotpatch: {line}", file=sys.stderr, flush=True)
    except OSError:   # nowhere to say it: the exit code still does
        quiet_stdout()
    return code


def emit(args, obj, text: str) -> None:
    """The result, once it has happened: a closed or full output cannot undo it, so it is no failure."""
    out = json.dumps(obj) if getattr(args, "json", False) else text
    try:
        print(out, flush=True)
    except OSError:   # EPIPE (`| head`), ENOSPC (/dev/full)
        quiet_stdout()


def quiet_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's last flush at exit must not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass


class ProgressBar:
    """A progress bar on the terminal (tqdm) while --all-processes works: processes done of all, and
    the outcomes so far; gone when the work is, the report follows."""

    def __init__(self, what: str):
        self.what, self.bar, self.counts = what, None, {}

    def start(self, total: int) -> None:
        from tqdm import tqdm
        tqdm.monitor_interval = 0   # no monitor thread: the workers are forked after this
        try:
            sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
        except OSError:
            sized = False
        # A terminal that reports no size (a serial console) gets 80 columns: tqdm would print nothing
        self.bar = tqdm(total=total, desc=self.what, unit="process", file=sys.stderr, leave=False,
                        dynamic_ncols=sized, ncols=None if sized else 80, mininterval=0.05)

    def advance(self, result: dict) -> None:
        self.counts[result["outcome"]] = self.counts.get(result["outcome"], 0) + 1
        if self.bar is not None:
            self.bar.set_postfix_str(", ".join(f"{n} {what}" for what, n in sorted(self.counts.items())),
                                     refresh=False)
            self.bar.update(1)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_bar(args, what: str) -> ProgressBar | None:
    """Only for a person at a terminal: never with --json, nor when stderr is a file or a pipe."""
    return ProgressBar(what) if not args.json and sys.stderr.isatty() else None


def run(args) -> int:
    if args.command == "apply" and args.all_processes:
        from hotpatch.ops.fleet import apply_everywhere
        report = apply_everywhere(args.patch, args.jobs, args.timeout, args.trust, args.name,
                                  progress_bar(args, "patching"))
        lines = [printable(f"{p['pid']:>7}  {p['outcome']:<16} {p.get('binary', '')}"
                           + (f"  {p['message']}" if p["message"] else "")) for p in report["processes"]]
        totals = ", ".join(f"{n} {what}" for what, n in sorted(report["summary"].items())) or "no process maps it"
        emit(args, report, "\n".join(lines + [f"{report['patch']}: {totals} ({report['seconds']} s)"]))
        return 0 if report["status"] == "done" else EXIT_PARTIAL
    if args.command == "apply":
        from hotpatch.ops.apply import apply
        report = apply(args.pid, args.patch, timeout=args.timeout, dry_run=args.dry_run, trust=args.trust)
        emit(args, report, describe_apply(report))
        warn_repaired(report)
        for w in report.get("warnings", []):
            sys.stderr.write(f"hotpatch: warning: {w}\n")
    elif args.command == "revert" and args.all_processes:
        from hotpatch.ops.fleet import revert_everywhere
        report = revert_everywhere(args.patch, args.jobs, args.timeout, progress=progress_bar(args, "reverting"))
        lines = [printable(f"{p['pid']:>7}  {p['outcome']:<10}" + (f"  {p['message']}" if p["message"] else ""))
                 for p in report["processes"]]
        totals = ", ".join(f"{n} {what}" for what, n in sorted(report["summary"].items())) or "no process carries it"
        emit(args, report, "\n".join(lines + [f"{report['patch']}: {totals} ({report['seconds']} s)"]))
        return 0 if report["status"] == "done" else EXIT_PARTIAL
    elif args.command == "revert":
        from hotpatch.ops.revert import revert
        if args.all and args.patch_id is not None:
            raise UsageError("give a PATCH_ID or --all, not both")
        report = revert(args.pid, args.patch_id, args.all, timeout=args.timeout)
        emit(args, report, printable(f"reverted patch {', '.join(map(str, report['reverted']))} "
                                     f"({', '.join(report['patches'])}) in process {report['pid']}")
             if report["reverted"] else f"nothing left to revert in process {report['pid']}")
        warn_repaired(report)
        warn_kept(report)
    elif args.command == "gc":
        from hotpatch.ops.gc import gc
        report = gc(args.pid, timeout=args.timeout)
        warn_repaired(report)
        emit(args, report, f"freed {len(report['freed'])} image(s) in process {report['pid']}"
             + (f" (patch {', '.join(map(str, report['freed']))})" if report["freed"] else ""))
        warn_kept(report)
    elif args.command == "list":
        from hotpatch.ops.listing import list_process
        listing = list_process(args.pid)
        patches, pending, repaired = listing.patches, listing.pending, listing.repaired
        warn_repaired({"repaired": repaired})
        if listing.unrepaired:
            sys.stderr.write("hotpatch: warning: what an interrupted run left could not be repaired: "
                             f"{listing.unrepaired}\n")
        lines = [printable(f"{p['id']:>3}  {p['status']:<8} {p['patch']}  applied {p['applied_at']}  "
                           f"functions: {names([f['name'] for f in p['functions']])}") for p in patches]
        lines += [f"  -  pending  image of {p['size']} bytes at {p['base']} mapped by an interrupted apply "
                  "(the next apply, revert or gc unmaps it)" for p in pending]
        emit(args, {"status": "ok", "pid": args.pid, "patches": patches, "pending": pending,
                    "repaired": repaired},
             "\n".join(lines) if lines else f"no patches applied to process {args.pid}")
    elif args.command == "build" and (args.diff or args.orig or args.patched):
        from hotpatch.ops.build_diff import DiffChange, TreeChange, build_diff
        if args.diff:
            if args.sources or not args.source or args.orig or args.patched:
                raise UsageError("build --diff takes --source SRCDIR, and neither patch sources nor --orig")
            change, source = DiffChange(args.diff, args.strip), args.source
        else:
            if args.sources or args.source or not (args.orig and args.patched):
                raise UsageError("build --orig OLDDIR takes --patched NEWDIR, and neither --source nor sources")
            change, source = TreeChange(args.orig, args.patched), args.orig
        meta = build_diff(change, source, args.target, args.output, args.build, args.keep_tree, args.cflags)
        emit(args, {"status": "built", "output": args.output, "replaces": [f.name for f in meta.replace],
                    "new": meta.new_functions, "external": meta.external, "sources": meta.sources},
             f"built {args.output}: replaces {names([f.name for f in meta.replace])}"
             f"{'; new ' + names(meta.new_functions) if meta.new_functions else ''} in "
             f"{os.path.basename(meta.target_path)} (build-id {meta.target_build_id[:16]}…)")
    elif args.command == "build":
        from hotpatch.ops.build import build
        if not args.sources:
            raise UsageError("build needs patch sources (SOURCE.c ...) or --diff FIX.patch --source SRCDIR")
        picks = {}
        for item in args.pick:
            name, sep, file = item.partition("=")
            if not sep:
                raise UsageError(f"--pick {item}: expected NAME=FILE.c")
            picks[name] = file
        meta = build(args.sources, args.target, args.output, args.cflags, picks)
        emit(args, {"status": "built", "output": args.output, "replaces": [f.name for f in meta.replace],
                    "new": meta.new_functions, "external": meta.external},
             f"built {args.output}: replaces {names([f.name for f in meta.replace])} in "
             f"{os.path.basename(meta.target_path)} (build-id {meta.target_build_id[:16]}…)")
    elif args.command == "info":
        from hotpatch import patchfile
        patch = patchfile.read(args.patch)
        patch.obj  # validates the code too
        m = patch.meta
        bindings = None
        if args.resolve is not None:
            from hotpatch.ops.resolve import describe, resolve_report
            bindings = resolve_report(args.resolve, args.patch)
        emit(args, {"status": "ok", "sha256": patch.sha256, "meta": _meta_dict(m),
                    **({"bindings": bindings} if bindings is not None else {})},
             "\n".join([f"patch {args.patch} (sha256 {patch.sha256[:16]}…)",
                        f"  target:    {m.target_path} ({m.arch}, build-id {m.target_build_id})",
                        f"  replaces:  {', '.join(f.name for f in m.replace)}",
                        f"  new:       {', '.join(m.new_functions) or '-'}",
                        f"  binds to target: {', '.join(sorted(m.target_symbols)) or '-'}",
                        f"  binds to libraries at apply: {', '.join(m.external) or '-'}",
                        f"  sources:   {', '.join(m.sources)}"] + _origin_lines(m)
                       + ([f"  in process {args.resolve}:"] + [printable(line) for line in describe(bindings)]
                          if bindings else [])))
    elif args.command == "status":
        from hotpatch.ops.fleet import status
        report = status(args.patch)
        lines = [printable(f"{c['pid']:>7}  patch {c['id']:<3} {c['patch']}  {c['module']}  "
                           f"functions: {names(c['functions'])}"
                           + ("" if c["authentic"] else "  (record not authentic here)")) for c in report["carried"]]
        lines += [printable(f"{m['pid']:>7}  without {m['patch']}: maps {m['binary']}, {m['why']}")
                  for m in report["missing"]]
        emit(args, report, "\n".join(lines) or "no process carries a patch")
    elif args.command == "install":
        from hotpatch.ops.daemon import install
        report = install(args.patch, args.patch_dir, args.trust)
        emit(args, report, f"installed {report['patch']} in {args.patch_dir} (signed by {report['signed_by']})")
    elif args.command == "uninstall":
        from hotpatch.ops.daemon import uninstall
        report = uninstall(args.patch, args.patch_dir, args.jobs, args.timeout)
        totals = ", ".join(f"{n} {what}" for what, n in sorted(report["summary"].items())) or "no process carried it"
        emit(args, report, f"uninstalled {report['patch']}: {totals}")
        return 0 if report["status"] == "uninstalled" else EXIT_PARTIAL
    elif args.command == "daemon":
        from hotpatch.ops.daemon import run as run_daemon
        from hotpatch.steps import install_termination_handlers
        install_termination_handlers()
        return run_daemon(args.patch_dir, args.trust, args.interval, args.timeout, args.once)
    elif args.command == "sign":
        from hotpatch.ops.trust import sign
        sig = sign(args.patch, args.key)
        emit(args, {"status": "signed", "patch": args.patch, "signature": sig},
             f"signed {args.patch}: {sig} (verify: ssh-keygen -Y verify -n hotpatch -s {sig} ...)")
    elif args.command == "demo":
        from hotpatch.demo import run_demo
        return run_demo()
    return 0


def warn_repaired(report: dict) -> None:
    """What an interrupted earlier run had left, repaired by this one first."""
    for line in report.get("repaired", []):
        sys.stderr.write(f"hotpatch: repaired: {line}\n")


def warn_kept(report: dict) -> None:
    pid = report["pid"]
    for w in report.get("warnings", []):
        sys.stderr.write(f"hotpatch: warning: {w}\n")
    for u in report["unfreed"]:
        sys.stderr.write(f"hotpatch: warning: the image of patch {u['id']} stays mapped at {u['base']} "
                         f"({u['reason']}); it is unreachable; the next hotpatch run on the process frees it "
                         f"(`hotpatch gc {pid}`)\n")
    for u in report["retired"]:
        sys.stderr.write(f"hotpatch: warning: the image of patch {u['id']} stays mapped at {u['base']}, "
                         f"retired: {u['reason']}; `hotpatch gc {pid}` frees it once nothing points there\n")


def _origin_lines(m) -> list[str]:
    """build --diff: per source file, each function and why it is in; the diffs it was built from."""
    by_file: dict[str, list[str]] = {}
    for name, o in m.origin.items():
        by_file.setdefault(o["file"], []).append(f"{name} ({o['why']})")
    lines = [printable(f"  {file}: {', '.join(items)}") for file, items in sorted(by_file.items())]
    lines += [printable(f"  diff:      {d['name']} (sha256 {d['sha256'][:16]}…, {d['text'].count(chr(10))} lines)")
              for d in m.diffs]
    return lines


def _meta_dict(m) -> dict:
    from dataclasses import asdict
    return asdict(m)


def names(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def describe_apply(r: dict) -> str:
    t = r["timings_ms"]
    stop = (t.get("resumed", 0) - t.get("stopping", 0)) if "resumed" in t else None
    funcs = names([f"{f['name']} ({f['jump']} jump)" for f in r["functions"]])
    if r["status"] == "dry-run":
        return f"dry run: patch {r['patch']} would replace {funcs} in process {r['pid']}; nothing changed"
    return (f"applied patch {r['id']} ({r['patch']}) to process {r['pid']}: {funcs}"
            + (f"; target stopped {stop:.2f} ms" if stop is not None else ""))
