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


def _ensure_store() -> Path:
    directory = store_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = directory.stat().st_mode
    if mode & 0o022:  # the EP ignores a store that others can write into
        os.chmod(directory, mode & ~0o022 & 0o7777)
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
