"""The local trust store: the kernel libraries this machine may load.

A converted model is data, but the kernel library it names is native code. The Cortex EP loads a kernel only when
its sha256 is trusted (checked in C++ before dlopen, csrc/ep/trust_policy.cc):

- the trust store: a directory holding one file per trusted sha256 (its content says where the entry came from,
  for people; the EP reads only the name). `cortex-convert` and `cortex rebuild` record the kernels they compile;
  `cortex trust MODEL` records a model's kernels after the user decides to trust its author.
  Location: $CORTEX_TRUST_DIR, else $XDG_CONFIG_HOME/cortex/trusted-kernels, else ~/.config/cortex/trusted-kernels.
  The directory must belong to the user and be writable by no one else, or the EP ignores it.
- explicitly, per session: `cortex.session_options(trust=[...])` (session config entry `cortex.trusted_kernels`);
- explicitly, per deployment: the environment variable CORTEX_TRUSTED_KERNELS (sha256 digests separated by commas,
  semicolons or white space).
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from pathlib import Path

TRUST_DIR_ENV = "CORTEX_TRUST_DIR"
TRUSTED_KERNELS_ENV = "CORTEX_TRUSTED_KERNELS"
SESSION_CONFIG_KEY = "cortex.trusted_kernels"

_SHA256 = re.compile(r"[0-9a-fA-F]{64}\Z")
_SEPARATORS = re.compile(r"[,;\s]+")


class TrustError(ValueError):
    pass


def store_dir() -> Path:
    """The trust store directory (the same rule as the EP's TrustStoreDir)."""
    configured = os.environ.get(TRUST_DIR_ENV)
    if configured:
        return Path(configured)
    config_home = os.environ.get("XDG_CONFIG_HOME", "")
    if config_home.startswith("/"):
        return Path(config_home) / "cortex" / "trusted-kernels"
    return Path(os.path.expanduser("~")) / ".config" / "cortex" / "trusted-kernels"


def is_sha256(text) -> bool:
    return isinstance(text, str) and bool(_SHA256.match(text))


def check_sha256(digest: str) -> str:
    if not is_sha256(digest):
        raise TrustError(f"{digest!r} is not a sha256 digest (64 hex digits)")
    return digest.lower()


def parse_list(text: str) -> list:
    """sha256 digests from a list separated by commas, semicolons or white space (the EP's ParseHashList)."""
    return [check_sha256(entry) for entry in _SEPARATORS.split(text or "") if entry]


def not_private(directory) -> str | None:
    """Why `directory` is not under this user's sole control, or None when it is: it (after symlinks) must belong to
    the user (or root) and be writable by no one else, and so must every folder above it, except that a folder others
    may write into is fine when its sticky bit keeps them from renaming what is not theirs (/tmp). The rule for
    everything Cortex trusts: the trust store (the EP's own check), the kernel cache, rebuilt copies."""
    path = Path(os.path.realpath(directory))
    uid = os.getuid()
    for i, folder in enumerate([path, *path.parents]):
        try:
            info = os.stat(folder)
        except OSError as e:
            return f"{folder} cannot be read ({e.strerror})"
        if info.st_uid not in (uid, 0):
            return f"{folder} belongs to another user (uid {info.st_uid})"
        writable_by_others = info.st_mode & 0o022
        if writable_by_others and (i == 0 or not info.st_mode & stat.S_ISVTX):
            return f"{folder} is writable by other users"
    return None


def _ensure_store() -> Path:
    """The store, created private when absent; an existing store others could write into is not repaired (entries
    may already have been planted): the user must look at it."""
    directory = store_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    why = not_private(directory)
    if why:
        raise TrustError(f"the trust store {directory} is not private ({why}), so the Cortex EP ignores it; check its "
                         f"entries, then make it yours alone (chmod go-w), or set {TRUST_DIR_ENV}")
    return directory


def add(digest: str, reason: str = "") -> Path:
    """Records `digest` as trusted; `reason` (one line) says why, for people reading the store."""
    digest = check_sha256(digest)
    directory = _ensure_store()
    entry = directory / digest
    text = " ".join((reason or "trusted").split()) + f" ({time.strftime('%Y-%m-%d %H:%M:%S')})\n"
    fd, staged = tempfile.mkstemp(prefix=f".{digest[:16]}.", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(staged, 0o600)
    os.replace(staged, entry)
    return entry


def remove(digest: str) -> bool:
    entry = store_dir() / check_sha256(digest)
    try:
        entry.unlink()
        return True
    except FileNotFoundError:
        return False


def in_store(digest: str) -> bool:
    entry = store_dir() / check_sha256(digest)
    return entry.is_file() and not entry.is_symlink()


def is_trusted(digest: str, session: tuple = ()) -> bool:
    """What the EP would decide for `digest` (store, environment, the session's list); the EP's checks of the store's
    ownership and permissions aside."""
    digest = check_sha256(digest)
    if digest in session:
        return True
    try:
        if digest in parse_list(os.environ.get(TRUSTED_KERNELS_ENV, "")):
            return True
    except TrustError:
        pass
    return in_store(digest)
