"""The host key that authenticates records: a process without it cannot forge or alter one.

A record lives in the memory of the process it describes, which may be
hostile or corrupted; revert and gc write and unmap what a record says. Each
record therefore carries an HMAC-SHA256 of its JSON, its image's address and
the process id, keyed with a secret the process cannot read: root's key is
/var/lib/hotpatch/record.key (0600, made by the first apply on the host).
Another user's key is under $XDG_STATE_HOME (that user patches only their
own processes, which could read it: there is no boundary to keep there).
$HOTPATCH_KEY_FILE names another file (tests).
"""

import hashlib
import hmac
import os

from hotpatch.errors import TraceError

ROOT_KEY = "/var/lib/hotpatch/record.key"
KEY_SIZE = 32
TAG_SIZE = 32
_DOMAIN = b"hotpatch record v1\0"


def key_path() -> str:
    if os.environ.get("HOTPATCH_KEY_FILE"):
        return os.environ["HOTPATCH_KEY_FILE"]
    if os.geteuid() == 0:
        return ROOT_KEY
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "hotpatch", "record.key")


def load(create: bool = False) -> bytes | None:
    """The key; made first (readable by its owner only) when `create`; None when there is none."""
    path = key_path()
    try:
        with open(path, "rb") as f:
            key = f.read(KEY_SIZE + 1)
        return key if len(key) == KEY_SIZE else None
    except FileNotFoundError:
        if not create:
            return None
    key = os.urandom(KEY_SIZE)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:   # made meanwhile by another run: that one counts
        return load()
    except OSError as e:
        raise TraceError(f"cannot make the host key {path}: {e.strerror}",
                         "records are authenticated with it: give hotpatch a writable place for it "
                         "(or HOTPATCH_KEY_FILE)") from e
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def tag(key: bytes, pid: int, base: int, body: bytes) -> bytes:
    """The authentication code of a record's JSON `body` for the image at `base` in process `pid`."""
    return hmac.new(key, _DOMAIN + pid.to_bytes(8, "little") + base.to_bytes(8, "little") + body,
                    hashlib.sha256).digest()


def matches(key: bytes | None, pid: int, base: int, body: bytes, found: bytes) -> bool:
    return key is not None and hmac.compare_digest(tag(key, pid, base, body), found)
