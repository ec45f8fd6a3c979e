"""`hotpatch daemon`: keep every process patched, those started later included; `install`, `uninstall`.

The patch directory (default /var/lib/hotpatch/patches) holds installed patches, each with its signature:
the daemon applies only patches that verify against the trust file (always required here). It learns of
new processes from the kernel's process-events connector (netlink, exec events; root only) and polls
/proc as well (every --interval seconds), which also covers a library mapped later by dlopen. The state in
each process stays the truth: a patch already there is never applied twice (apply refuses it), the
daemon's own memory only avoids asking again; a restart catches up with whatever it missed.
One line per event on stderr (journald takes it from there).
"""

import os
import select
import shutil
import socket
import stat
import struct
import sys
import time

from hotpatch import patchfile
from hotpatch.errors import HotpatchError, Untrusted, UsageError
from hotpatch.ops import fleet
from hotpatch.ops.apply import LoadedPatch, apply_loaded, load
from hotpatch.ops.trust import check_trust_path, trust_file, verify
from hotpatch.steps import requested

DEFAULT_DIR = "/var/lib/hotpatch/patches"
NETLINK_CONNECTOR, CN_IDX_PROC, CN_VAL_PROC = 11, 1, 1
PROC_CN_MCAST_LISTEN, PROC_EVENT_EXEC = 1, 2


def check_dir(path: str, create: bool = False) -> None:
    """The patch directory: a real directory, root's (or the caller's), not writable by others."""
    if create and not os.path.lexists(path):
        os.makedirs(path, mode=0o755)
    check_trust_path(os.path.join(path, "."))   # the directory and its parent


def install(patch: str, patch_dir: str, trust: str | None) -> dict:
    check_dir(patch_dir, create=True)
    data = patchfile.read_bytes(patch)
    signer = verify(patch, data, trust, required=True)
    patchfile.decode(data, patch).obj   # a valid patch, before it is installed
    name = os.path.basename(patch)
    for src, dst in ((patch, name), (patch + ".sig", name + ".sig")):
        tmp = os.path.join(patch_dir, f".{dst}.tmp")
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(patch_dir, dst))
    return {"status": "installed", "patch": name, "signed_by": signer, "patch_dir": patch_dir}


def uninstall(name: str, patch_dir: str, jobs: int, timeout: float) -> dict:
    check_dir(patch_dir)
    path = os.path.join(patch_dir, os.path.basename(name))
    if not os.path.isfile(path):
        raise UsageError(f"{name} is not installed in {patch_dir}")
    data = patchfile.read_bytes(path)
    for p in (path, path + ".sig"):   # first: the daemon stops applying it, then it is reverted
        if os.path.exists(p):
            os.remove(p)
    report = fleet.revert_everywhere(path, jobs, timeout, data)   # by its hash: the same patch everywhere
    report["status"] = "uninstalled" if report["status"] == "done" else report["status"]
    return report


class Installed:
    """The installed patches that verify, each read, verified and parsed once while it, its signature and
    the trust file (and its directory) stay the same files, and for at most REVERIFY seconds (a key of the
    trust file may expire: valid-before); a change of any is seen at the next pass, and checked again."""

    REVERIFY = 60.0

    def __init__(self, patch_dir: str, trust: str | None):
        self.patch_dir, self.trust = patch_dir, trust
        self._seen: dict[str, tuple[tuple, float, LoadedPatch | None]] = {}
        self._refused: str | None = None

    def current(self) -> list[LoadedPatch]:
        trust = trust_file(self.trust)
        try:
            if os.path.lexists(trust):   # a missing one: each patch is refused, saying so (load)
                check_trust_path(trust)   # each pass: a trust file made unsafe since stops everything
        except (HotpatchError, OSError) as e:
            why = e.line() if isinstance(e, HotpatchError) else f"{trust}: {e.strerror}"
            if why != self._refused:   # said once, not every pass
                log(f"every patch skipped: {why}")
            self._refused, self._seen = why, {}
            return []
        self._refused = None
        out, seen, now = [], {}, time.monotonic()
        for name in sorted(os.listdir(self.patch_dir)):
            path = os.path.join(self.patch_dir, name)
            if name.endswith(".sig") or name.startswith(".") or not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            key = self.identity(path)
            known = self._seen.get(path)
            if known is not None and known[0] == key and now - known[1] < self.REVERIFY:
                seen[path] = known
            else:
                try:
                    seen[path] = (key, now, load(path, self.trust, required=True))
                except HotpatchError as e:
                    seen[path] = (key, now, None)
                    if known is None or known[0] != key or known[2] is not None:
                        log(f"skipped {name}: {e.line()}")
            if seen[path][2] is not None:
                out.append(seen[path][2])
        self._seen = seen
        return out

    def identity(self, path: str) -> tuple:
        """What must stay the same for a patch verified before to stand: the patch, its signature, the
        trust file and its directory (each as a link and as what it leads to)."""
        trust = trust_file(self.trust)
        return tuple(_identity(p) for p in (path, path + ".sig", trust, os.path.dirname(trust) or "."))

    def still(self, loaded: LoadedPatch) -> bool:
        """The patch is still installed as it was verified (uninstall removes it: no process is patched
        with it after that, even in the pass under way)."""
        known = self._seen.get(loaded.path)
        return known is not None and known[2] is loaded and self.identity(loaded.path) == known[0]


def _identity(path: str) -> tuple | None:
    try:
        lst, st = os.lstat(path), os.stat(path)
    except OSError:
        return None
    return tuple((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_mode, s.st_uid, s.st_gid)
                 for s in (lst, st))


def log(line: str) -> None:
    sys.stderr.write(f"hotpatch-daemon: {line}\n")
    sys.stderr.flush()


def _events() -> socket.socket | None:
    """The kernel's process-events connector, listening; None where it is refused (not root, no connector)."""
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        s.bind((os.getpid(), CN_IDX_PROC))
        # nlmsghdr, cn_msg (idx, val, seq, ack, len, flags), then the op
        op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
        cn = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
        s.send(struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, os.getpid()) + cn)   # NLMSG_DONE
        s.setblocking(False)
        return s
    except OSError as e:
        log(f"process events unavailable ({e.strerror}): polling only")
        return None


def _exec_pids(sock: socket.socket) -> list[int]:
    out = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return out
        # nlmsghdr (16) + cn_msg (20) + proc_event: what (4), cpu (4), timestamp (8), then event data
        if len(data) >= 16 + 20 + 16 + 8:
            what = struct.unpack_from("=I", data, 36)[0]
            if what == PROC_EVENT_EXEC:
                out.append(struct.unpack_from("=i", data, 52)[0])


def run(patch_dir: str, trust: str | None, interval: float, timeout: float, once: bool = False) -> int:
    check_dir(patch_dir, create=True)
    sock = _events()
    done: dict[tuple[int, str], str] = {}   # (pid, patch) -> outcome: asked once per process start
    log(f"watching {patch_dir} (signatures checked against {trust or 'the default trust file'})")
    patches = Installed(patch_dir, trust)
    while requested() is None:
        for loaded in patches.current():
            path = loaded.path
            for pid, binary in fleet.processes_mapping(loaded.patch.meta.target_build_id, {os.getpid(), os.getppid()}):
                key = (pid, _started(pid) + path)
                if key in done:
                    continue
                if not patches.still(loaded):
                    break   # uninstalled or changed meanwhile: the next pass decides
                try:
                    report = apply_loaded(pid, loaded, timeout=timeout)
                    done[key] = "patched"
                    log(f"patched process {pid} ({binary}) with {os.path.basename(path)} as patch {report['id']}")
                except HotpatchError as e:
                    done[key] = "refused"
                    if "already applied" not in e.message:
                        log(f"process {pid} ({binary}) not patched with {os.path.basename(path)}: {e.line()}")
        if once:
            return 0
        _wait(sock, interval)
    log("stopped")
    return 0


def _started(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()   # starttime: a pid reused is another process
    except (OSError, IndexError):
        return "?"


def _wait(sock: socket.socket | None, interval: float) -> None:
    """Until the next poll, or an exec (then a moment for the loader to map the program's libraries)."""
    deadline = time.monotonic() + interval
    while requested() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([sock] if sock else [], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
        if ready and _exec_pids(sock):   # type: ignore[arg-type]
            time.sleep(0.05)
            return


__all__ = ["install", "uninstall", "run", "Untrusted"]
