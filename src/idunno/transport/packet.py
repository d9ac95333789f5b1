"""Authenticated datagram framing (pure): version | timestamp | payload | HMAC.

    byte 0      frame version (1)
    bytes 1-8   sender's wall-clock time, milliseconds since the epoch, big-endian
    bytes 9..-16 payload (a msgpack packet)
    last 16     HMAC-SHA256(key, everything before it), truncated to 128 bits

A frame is accepted only if its MAC verifies, its timestamp is within `window` seconds of ours
and the same MAC was not seen within the window (replay). Each rejection is counted by reason.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import Counter, OrderedDict

FRAME_VERSION = 1
MAC_BYTES = 16
HEADER = struct.Struct(">BQ")
OVERHEAD = HEADER.size + MAC_BYTES  # 25 bytes
MAX_DATAGRAM = 8192


def seal(key: bytes, payload: bytes, now: float) -> bytes:
    head = HEADER.pack(FRAME_VERSION, int(now * 1000))
    mac = hmac.new(key, head + payload, hashlib.sha256).digest()[:MAC_BYTES]
    return head + payload + mac


class Opener:
    """Verifies frames and remembers recent MACs to reject replays."""

    def __init__(self, key: bytes, window: float = 30.0) -> None:
        self._key = key
        self.window = window
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self.dropped: Counter[str] = Counter()

    def open(self, frame: bytes, now: float) -> bytes | None:
        """The payload, or None (counted in `dropped`) if the frame must be ignored."""
        if len(frame) > MAX_DATAGRAM:
            self.dropped["oversize"] += 1
            return None
        if len(frame) <= OVERHEAD:
            self.dropped["malformed"] += 1
            return None
        version, stamp_ms = HEADER.unpack_from(frame)
        if version != FRAME_VERSION:
            self.dropped["malformed"] += 1
            return None
        body, mac = frame[:-MAC_BYTES], frame[-MAC_BYTES:]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()[:MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            self.dropped["bad_mac"] += 1
            return None
        if abs(now - stamp_ms / 1000) > self.window:
            self.dropped["stale"] += 1
            return None
        self._forget(now)
        if mac in self._seen:
            self.dropped["replay"] += 1
            return None
        self._seen[mac] = now
        return body[HEADER.size :]

    def _forget(self, now: float) -> None:
        horizon = now - 2 * self.window
        while self._seen:
            mac, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon:
                break
            del self._seen[mac]
