"""HTTP bearer tokens derived from the cluster key: `idn1.<expiry>.<hmac>`.

The key never travels; a token proves knowledge of it until its expiry (unix seconds).
"""

from __future__ import annotations

import hashlib
import hmac
import time

PREFIX = "idn1"


def _mac(key: bytes, expiry: int) -> str:
    return hmac.new(key, f"idunno-http|{expiry}".encode(), hashlib.sha256).hexdigest()


def mint(key: bytes, ttl: float = 600.0, now: float | None = None) -> str:
    expiry = int((time.time() if now is None else now) + ttl)
    return f"{PREFIX}.{expiry}.{_mac(key, expiry)}"


def check(key: bytes, token: str, now: float | None = None) -> str | None:
    """None if the token is valid, else a one-line reason."""
    parts = token.split(".")
    if (
        len(parts) != 3
        or parts[0] != PREFIX
        or not parts[1].isascii()
        or not parts[1].isdigit()
        or len(parts[1]) > 12
    ):
        return "malformed token: expected idn1.<expiry>.<mac> (the CLI makes one from the key)"
    expiry = int(parts[1])
    given = parts[2].encode("utf-8", "replace")
    if not hmac.compare_digest(given, _mac(key, expiry).encode()):
        return "token does not match this cluster's key: use the same key file as the nodes"
    if expiry < (time.time() if now is None else now):
        return "token expired: mint a fresh one (`idunno dashboard` prints a new link)"
    return None
