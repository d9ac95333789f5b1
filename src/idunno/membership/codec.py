"""Versioned msgpack encoding of membership packets and push-pull state.

A packet is a msgpack array [sender, primary, updates]; every message is an array whose first
element is a small integer type tag. Unknown tags or malformed shapes raise DecodeError, which the
transport counts and drops: a hostile datagram can never crash the node.
"""

from __future__ import annotations

from typing import Any

import msgpack

from idunno.membership.messages import (
    Ack,
    Alive,
    Dead,
    MemberState,
    Nack,
    Packet,
    Ping,
    PingReq,
    Primary,
    Status,
    Suspect,
    Update,
)

CODEC_VERSION = 1
_MAX_NAME = 256
_MAX_UPDATES = 512
MAX_INCARNATION = 2**32

_PING, _ACK, _PING_REQ, _NACK, _ALIVE, _SUSPECT, _DEAD = range(1, 8)
_STATUS_CODES = {Status.ALIVE: 0, Status.SUSPECT: 1, Status.FAILED: 2, Status.LEFT: 3}
_STATUS_BY_CODE = {v: k for k, v in _STATUS_CODES.items()}


class DecodeError(ValueError):
    """The bytes are not a well-formed membership message."""


def _primary_to_wire(m: Primary | None) -> list[Any] | None:
    match m:
        case None:
            return None
        case Ping(seq, target):
            return [_PING, seq, target]
        case Ack(seq):
            return [_ACK, seq]
        case PingReq(seq, target, target_addr):
            return [_PING_REQ, seq, target, target_addr]
        case Nack(seq):
            return [_NACK, seq]
    raise TypeError(f"not a primary message: {m!r}")


def update_to_wire(u: Update) -> list[Any]:
    match u:
        case Alive(name, addr, inc):
            return [_ALIVE, name, addr, inc]
        case Suspect(name, inc, accuser):
            return [_SUSPECT, name, inc, accuser]
        case Dead(name, inc, accuser):
            return [_DEAD, name, inc, accuser]
    raise TypeError(f"not an update: {u!r}")


def encode_update(u: Update) -> bytes:
    out: bytes = msgpack.packb(update_to_wire(u))
    return out


def encode_packet(p: Packet) -> bytes:
    """Encode a packet; `updates` must already fit the size budget (see BroadcastQueue)."""
    wire = [CODEC_VERSION, p.sender, _primary_to_wire(p.primary)]
    wire.append([update_to_wire(u) for u in p.updates])
    out: bytes = msgpack.packb(wire)
    return out


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v or len(v) > _MAX_NAME:
        raise DecodeError("bad name or address field")
    return v


def _addr(v: Any) -> str:
    """HOST:PORT with a port in 1..65535 (a bad one must never reach the socket layer)."""
    text = _str(v)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise DecodeError("bad address field")
    return text


def _inc(v: Any) -> int:
    """Incarnations stay far below the wire limit, so a refutation (+1) always encodes."""
    n = _uint(v)
    if n >= MAX_INCARNATION:
        raise DecodeError("incarnation out of range")
    return n


def _uint(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**63:
        raise DecodeError("bad integer field")
    return v


def _primary_from_wire(w: Any) -> Primary | None:
    if w is None:
        return None
    if not isinstance(w, list) or not w:
        raise DecodeError("bad primary message")
    tag = w[0]
    if tag == _PING and len(w) == 3:
        return Ping(_uint(w[1]), _str(w[2]))
    if tag == _ACK and len(w) == 2:
        return Ack(_uint(w[1]))
    if tag == _PING_REQ and len(w) == 4:
        return PingReq(_uint(w[1]), _str(w[2]), _addr(w[3]))
    if tag == _NACK and len(w) == 2:
        return Nack(_uint(w[1]))
    raise DecodeError(f"unknown primary message type {tag!r}")


def _update_from_wire(w: Any) -> Update:
    if not isinstance(w, list) or len(w) != 4:
        raise DecodeError("bad update")
    tag = w[0]
    if tag == _ALIVE:
        return Alive(_str(w[1]), _addr(w[2]), _inc(w[3]))
    if tag == _SUSPECT:
        return Suspect(_str(w[1]), _inc(w[2]), _str(w[3]))
    if tag == _DEAD:
        return Dead(_str(w[1]), _inc(w[2]), _str(w[3]))
    raise DecodeError(f"unknown update type {tag!r}")


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"not msgpack: {type(exc).__name__}") from None


def decode_packet(data: bytes) -> Packet:
    w = _unpack(data)
    if not isinstance(w, list) or len(w) != 4:
        raise DecodeError("packet is not a 4-element array")
    if w[0] != CODEC_VERSION:
        raise DecodeError(f"unsupported codec version {w[0]!r}")
    updates = w[3]
    if not isinstance(updates, list) or len(updates) > _MAX_UPDATES:
        raise DecodeError("bad update list")
    return Packet(
        _str(w[1]), _primary_from_wire(w[2]), tuple(_update_from_wire(u) for u in updates)
    )


def encode_states(states: list[MemberState], join: bool = False) -> bytes:
    rows = [[s.name, s.addr, s.incarnation, _STATUS_CODES[s.status]] for s in states]
    out: bytes = msgpack.packb([CODEC_VERSION, join, rows])
    return out


def decode_states(data: bytes) -> tuple[list[MemberState], bool]:
    """Decode a push-pull body into (states, join flag)."""
    w = _unpack(data)
    if not isinstance(w, list) or len(w) != 3 or w[0] != CODEC_VERSION:
        raise DecodeError("bad push-pull body")
    if not isinstance(w[1], bool) or not isinstance(w[2], list):
        raise DecodeError("bad push-pull body")
    states = []
    for row in w[2]:
        if not isinstance(row, list) or len(row) != 4:
            raise DecodeError("bad member row")
        status = row[3]
        if not isinstance(status, int) or isinstance(status, bool) or status not in _STATUS_BY_CODE:
            raise DecodeError("bad member status")
        states.append(
            MemberState(_str(row[0]), _addr(row[1]), _inc(row[2]), _STATUS_BY_CODE[status])
        )
    return states, w[1]
