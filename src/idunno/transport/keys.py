"""The cluster key: 32 random bytes, shared by every node, stored as 64 hex characters."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_BYTES = 32
ENV_VAR = "IDUNNO_CLUSTER_KEY"


class ClusterKeyError(ValueError):
    """The cluster key is missing or malformed; the message says how to fix it."""


def generate() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def to_text(key: bytes) -> str:
    return key.hex()


def parse(text: str, source: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ClusterKeyError(
            f"cluster key in {source} is not hex: expected {2 * KEY_BYTES} hex characters "
            "(make one with `idunno keygen`)"
        ) from None
    if len(key) != KEY_BYTES:
        raise ClusterKeyError(
            f"cluster key in {source} has {len(key)} bytes, expected {KEY_BYTES} "
            "(make one with `idunno keygen`)"
        )
    return key


def write_key_file(path: Path, key: bytes) -> None:
    """Write the key readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    with os.fdopen(fd, "w") as f:
        f.write(to_text(key) + "\n")


def load(key_file: str | None, fallback_file: Path | None = None) -> bytes:
    """Key from --key-file, else $IDUNNO_CLUSTER_KEY, else `fallback_file` if it exists."""
    if key_file:
        path = Path(key_file)
        try:
            return parse(path.read_text(), str(path))
        except OSError as exc:
            raise ClusterKeyError(f"cannot read key file {path}: {exc.strerror}") from None
    env = os.environ.get(ENV_VAR)
    if env:
        return parse(env, f"${ENV_VAR}")
    if fallback_file is not None and fallback_file.exists():
        return parse(fallback_file.read_text(), str(fallback_file))
    raise ClusterKeyError(
        f"no cluster key: pass --key-file FILE or set {ENV_VAR} "
        "(create one with `idunno keygen --out FILE`)"
    )
