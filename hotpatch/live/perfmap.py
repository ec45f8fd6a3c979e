"""/tmp/perf-PID.map: the file `perf` reads to name code in anonymous executable memory.

One line per replacing function ("START SIZE NAME", hex), kept current after
apply, revert and gc. /tmp is world-writable and hotpatch runs as root, so a
file is only ever made where none is (O_EXCL, never following a link) or
replaced whole by rename (an existing one is never opened for writing), and
only if hotpatch wrote it: a regular file of ours
whose first line is MARKER. Anything else there is left alone with a warning.
"""

import os
import stat
import tempfile

from hotpatch.live.records import PatchRecord

PERF_MAP_DIR = "/tmp"
MARKER = "0 0 [hotpatch]\n"   # a valid, empty entry: perf ignores it, hotpatch recognises it


def path_for(pid: int) -> str:
    return os.path.join(PERF_MAP_DIR, f"perf-{pid}.map")


def lines_for(records: list[PatchRecord]) -> str:
    out = [MARKER]
    for r in records:
        for f in r.functions:
            if f.size:
                name = "".join(c if c.isprintable() and c != "\n" else "?" for c in f.name)
                out.append(f"{f.new:x} {f.size:x} {name} [hotpatch {r.id}]\n")
    return "".join(out)


def _ours(path: str) -> bool | None:
    """True: a file hotpatch wrote; False: something else is there; None: nothing is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_ino != st.st_ino:
            return False
        return os.read(fd, len(MARKER)) == MARKER.encode()
    finally:
        os.close(fd)


def update(pid: int, records: list[PatchRecord]) -> str | None:
    """Write (or remove, when no record is left) the perf map of `pid`; a warning, or None when done."""
    path = path_for(pid)
    try:
        ours = _ours(path)
        if ours is False:
            return f"{path} exists and hotpatch did not write it: left alone, perf will not name patch code"
        if not any(f.size for r in records for f in r.functions):
            if ours:
                os.unlink(path)
            return None
        text = lines_for(records).encode()
        if ours is None:
            try:   # none there: made in place (O_EXCL: nothing that appeared meanwhile is followed or reused)
                _write_new(path, text)
                return None
            except FileExistsError:
                return f"{path} appeared while hotpatch wrote it: left alone, perf may not name patch code"
        fd, tmp = tempfile.mkstemp(prefix=f".perf-{pid}.", suffix=".hotpatch", dir=PERF_MAP_DIR)
        try:
            _fill(fd, text)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, path)
        except OSError:
            os.unlink(tmp)
            raise
        return None
    except OSError as e:
        return f"cannot write {path}: {e.strerror}"


def _write_new(path: str, text: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _fill(fd, text)
    except OSError:
        os.unlink(path)   # never a file without the marker: it would not be recognised as ours
        raise
    finally:
        os.close(fd)


def _fill(fd: int, text: bytes) -> None:
    os.fchmod(fd, 0o644)   # perf, run by another user, reads it
    view = memoryview(text)
    while view:
        view = view[os.write(fd, view):]
