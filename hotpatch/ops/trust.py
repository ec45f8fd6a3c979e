"""Signed patches: OpenSSH signatures (SSHSIG, namespace `hotpatch`) made and checked by OpenSSH's own
`ssh-keygen -Y`, against an allowed-signers file, the keys administrators already manage.

    hotpatch sign fix.hp --key ~/.ssh/id_ed25519      # writes fix.hp.sig
    ssh-keygen -Y verify -f allowed_signers -I admin -n hotpatch -s fix.hp.sig < fix.hp   # the same check

Policy: when the trust file exists (default /etc/hotpatch/allowed_signers; --trust or HOTPATCH_TRUST), apply
accepts only a patch whose signature verifies against it; otherwise unsigned patches are accepted, as before.
The trust file and the directory holding it must be root's (or the caller's), not writable by others, and
not symlinks: anyone who could write them could make any patch trusted.
"""

import os
import shutil
import stat
import subprocess

from hotpatch.errors import Untrusted, UsageError

NAMESPACE = "hotpatch"
DEFAULT_TRUST = "/etc/hotpatch/allowed_signers"


def trust_file(explicit: str | None = None) -> str:
    return explicit or os.environ.get("HOTPATCH_TRUST") or DEFAULT_TRUST


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        raise UsageError("ssh-keygen is not installed (signatures are OpenSSH's)", "apt-get install openssh-client")
    return found


def sign(patch: str, key: str) -> str:
    """Sign `patch` with the OpenSSH private key `key`; the signature's path (patch + .sig)."""
    for path, what in ((patch, "patch file"), (key, "key")):
        if not os.path.isfile(path):
            raise UsageError(f"{what} {path} does not exist")
    sig = patch + ".sig"
    if os.path.lexists(sig):
        os.remove(sig)   # ssh-keygen will not overwrite it
    r = subprocess.run([_ssh_keygen(), "-Y", "sign", "-f", key, "-n", NAMESPACE, patch],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise UsageError(f"ssh-keygen could not sign {patch}: {_last(r.stderr)}", "check the key (and its passphrase)")
    return sig


def check_trust_path(path: str) -> None:
    """The trust file and its directory: not symlinks, owned by root or by whoever runs hotpatch, not
    writable by group or others."""
    for p in (path, os.path.dirname(os.path.abspath(path))):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            raise Untrusted(f"{p} is a symbolic link: not trusted", "make it a plain file owned by root")
        if st.st_uid not in (0, os.geteuid()):
            raise Untrusted(f"{p} belongs to uid {st.st_uid}: not trusted", "chown it to root")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise Untrusted(f"{p} is writable by others: not trusted", f"chmod go-w {p}")


def verify(patch: str, data: bytes, trust: str | None = None, required: bool = False) -> str | None:
    """Check `data` (the bytes of `patch`, read once: what is verified is what is applied) against the
    patch's .sig and the trust file. The signer's principal, or None when no trust file exists and none
    is required (an unsigned patch is then accepted). Raises Untrusted."""
    path = trust_file(trust)
    if not os.path.lexists(path):
        if required or trust:
            raise Untrusted(f"no trust file {path}: a signature cannot be checked",
                            "list the administrators' keys in an OpenSSH allowed-signers file there")
        return None
    check_trust_path(path)
    sig = patch + ".sig"
    if not os.path.isfile(sig):
        raise Untrusted(f"{patch} is not signed (no {os.path.basename(sig)}) and {path} requires signatures",
                        f"sign it: hotpatch sign {patch} --key KEY")
    keygen = _ssh_keygen()
    found = subprocess.run([keygen, "-Y", "find-principals", "-s", sig, "-f", path],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    principals = found.stdout.split()
    if found.returncode != 0 or not principals:
        raise Untrusted(f"the key that signed {os.path.basename(patch)} is not in {path}",
                        "sign with a trusted key, or add its key to the allowed signers")
    r = subprocess.run([keygen, "-Y", "verify", "-f", path, "-I", principals[0], "-n", NAMESPACE, "-s", sig],
                       input=data, capture_output=True)
    if r.returncode != 0:
        why = _last((r.stderr or r.stdout).decode(errors="replace"))
        raise Untrusted(f"the signature of {os.path.basename(patch)} does not verify: {why}",
                        "the file was changed after it was signed, or it was signed for another use: sign it again")
    return principals[0]


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"
