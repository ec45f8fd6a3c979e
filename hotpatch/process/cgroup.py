"""Is the process frozen by the cgroup v2 freezer? Asked before anything is done to it.

A frozen task does not stop for ptrace, nor run a single step: every wait
would time out, and a thread resumed to run an injected system call would run
it when thawed, with registers hotpatch could not restore meanwhile. So a
frozen process (or one being frozen) is refused before it is touched.
"""

import os

from hotpatch.process import procfs

CGROUP2 = "cgroup2"


# Where it was found: a cgroup v2 mount's root has cgroup.controllers, and hotpatch's own mount
# namespace does not change under it, so a stat tells the mount is still there (one per apply, where
# reading /proc/self/mounts is a few dozen lines to parse).
_found: str | None = None


def cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted in hotpatch's own namespace (/sys/fs/cgroup or .../unified)."""
    global _found
    if _found is not None and os.path.exists(os.path.join(_found, "cgroup.controllers")):
        return _found
    try:
        text = procfs.read("/proc/self/mounts").decode(errors="surrogateescape")
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == CGROUP2:
            _found = parts[1]
            return _found
    return None


def v2_path(pid: int) -> str | None:
    """The process's cgroup v2 path ("0::/path" in /proc/PID/cgroup)."""
    try:
        text = procfs.read(f"/proc/{pid}/cgroup").decode(errors="surrogateescape")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def freezer_state(pid: int) -> tuple[str, str] | None:
    """(the cgroup's directory, "frozen" or "freezing") when the process is frozen or being frozen, else None."""
    mount, path = cgroup2_mount(), v2_path(pid)
    if mount is None or path is None:
        return None
    directory = os.path.join(mount, path.lstrip("/"))
    try:
        text = procfs.read(os.path.join(directory, "cgroup.events")).decode(errors="surrogateescape")
        events = dict(line.split(None, 1) for line in text.splitlines() if " " in line)
        if events.get("frozen", "0").strip() == "1":
            return directory, "frozen"
        if procfs.read(os.path.join(directory, "cgroup.freeze")).strip() == b"1":
            return directory, "freezing"
    except (OSError, ValueError):
        return None   # the root cgroup has no cgroup.freeze; an unreadable one tells nothing
    return None
