"""Membership codec: round trips, rejection of malformed input, and fuzzing."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idunno.membership.codec import (
    CODEC_VERSION,
    MAX_INCARNATION,
    DecodeError,
    decode_packet,
    decode_states,
    encode_packet,
    encode_states,
    encode_update,
)
from idunno.membership.messages import (
    Ack,
    Alive,
    Dead,
    MemberState,
    Nack,
    Packet,
    Ping,
    PingReq,
    Status,
    Suspect,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PRIMARIES = [
    None,
    Ping(0, "n1"),
    Ping(2**63 - 1, "n" * 256),
    Ack(7),
    PingReq(9, "n2", "10.0.0.3:7946"),
    Nack(2**40),
]
UPDATES = [
    Alive("n1", "10.0.0.2:7946", 0),
    Alive("ünïcødé-名前", "[::1]:7946", 3),
    Suspect("n2", 5, "n3"),
    Dead("n4", 1, "n5"),
    Dead("n6", 2, "n6"),  # a departure
]


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj)
    return out


# --- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("primary", PRIMARIES, ids=repr)
def test_every_primary_round_trips(primary: Any) -> None:
    p = Packet("n0", primary, ())
    assert decode_packet(encode_packet(p)) == p


@pytest.mark.parametrize("update", UPDATES, ids=repr)
def test_every_update_round_trips(update: Any) -> None:
    p = Packet("n0", None, (update,))
    back = decode_packet(encode_packet(p))
    assert back == p
    assert type(back.updates[0]) is type(update)


def test_packet_with_primary_and_all_updates_round_trips() -> None:
    p = Packet("sender", PingReq(3, "n1", "10.0.0.2:1"), tuple(UPDATES))
    assert decode_packet(encode_packet(p)) == p


def test_dead_left_flag_survives_round_trip() -> None:
    left, failed = Dead("a", 1, "a"), Dead("a", 1, "b")
    out = decode_packet(encode_packet(Packet("x", None, (left, failed)))).updates
    assert [u.left for u in out if isinstance(u, Dead)] == [True, False]


def test_encode_update_matches_its_share_of_a_packet() -> None:
    """The broadcast queue budgets with encode_update sizes: they must be the real sizes."""
    bare = len(encode_packet(Packet("n0", None, ())))
    for u in UPDATES:
        assert len(encode_packet(Packet("n0", None, (u,)))) == bare + len(encode_update(u))


@pytest.mark.parametrize("join", [True, False])
@pytest.mark.parametrize("status", list(Status))
def test_push_pull_states_round_trip(join: bool, status: Status) -> None:
    states = [
        MemberState("n0", "10.0.0.1:7946", 0, Status.ALIVE),
        MemberState("n1", "10.0.0.2:7946", 12, status),
    ]
    assert decode_states(encode_states(states, join=join)) == (states, join)


def test_empty_push_pull_round_trips() -> None:
    assert decode_states(encode_states([])) == ([], False)


# --- rejection --------------------------------------------------------------------------


def _packet(
    *, version: Any = CODEC_VERSION, sender: Any = "n0", primary: Any = None, updates: Any = ()
) -> bytes:
    return _pack([version, sender, primary, list(updates)])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x94",  # truncated array
        _pack([CODEC_VERSION, "n0", None, []]) + b"\x00",  # trailing garbage
        _pack({"a": 1}),
        _pack({1: 2}),  # non-string map key
        _pack([CODEC_VERSION, "n0", None]),  # three elements
        _pack("just a string"),
        _packet(version=2),
        _packet(version=None),
        _packet(sender=""),
        _packet(sender="x" * 257),
        _packet(sender=b"n0"),
        _packet(sender=5),
        _packet(primary=[1, 1]),  # ping without target
        _packet(primary=[1, True, "n1"]),  # a bool is not a sequence number
        _packet(primary=[1, -1, "n1"]),
        _packet(primary=[1, 2**63, "n1"]),
        _packet(primary=[1, 1.5, "n1"]),
        _packet(primary=[99, 1]),
        _packet(primary=[]),
        _packet(primary="ping"),
        _packet(updates=[[5, "n1", 0]]),  # suspect with a missing field
        _packet(updates=[[42, "n1", 0, "n2"]]),
        _packet(updates=[[5, "n1", "0", "n2"]]),
        _packet(updates=[[5, "", 0, "n2"]]),
        _packet(updates=["alive"]),
        _packet(updates=[[5, "n1", 0, "n2"]] * 513),
        _pack([CODEC_VERSION, "n0", None, "not a list"]),
    ],
    ids=lambda b: b[:24].hex(),
)
def test_malformed_packets_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_packet(data)


def test_update_list_limit_is_inclusive() -> None:
    p = Packet("n0", None, tuple(Suspect(f"n{i}", i, "n0") for i in range(512)))
    assert decode_packet(encode_packet(p)) == p


def test_decode_error_is_a_value_error() -> None:
    """Callers that catch ValueError (the CLI) also catch decoding failures."""
    assert issubclass(DecodeError, ValueError)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        _pack([CODEC_VERSION, False]),
        _pack([2, False, []]),
        _pack([CODEC_VERSION, 1, []]),  # join flag must be a bool
        _pack([CODEC_VERSION, False, {}]),
        _pack([CODEC_VERSION, False, [["n0", "h:1", 0]]]),
        _pack([CODEC_VERSION, False, [["n0", "h:1", 0, 9]]]),  # unknown status code
        _pack([CODEC_VERSION, False, [["n0", "h:1", -1, 0]]]),
        _pack([CODEC_VERSION, False, [["", "h:1", 0, 0]]]),
        _pack([CODEC_VERSION, False, [["n0", None, 0, 0]]]),
        _pack([CODEC_VERSION, False, ["row"]]),
    ],
    ids=lambda b: b[:24].hex(),
)
def test_malformed_push_pull_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_states(data)


@pytest.mark.parametrize("status", [[0], {"a": 0}, 0.0, True, None, "0"])
def test_status_code_must_be_a_plain_int(status: Any) -> None:
    """An unhashable status once escaped as TypeError (`row[3] in dict`); 0.0 and True compared
    equal to valid codes."""
    with pytest.raises(DecodeError):
        decode_states(_pack([CODEC_VERSION, False, [["n0", "h:1", 0, status]]]))


@pytest.mark.parametrize(
    "address", ["h:1", "h:65535", "10.0.0.1:7946", "[::1]:7946", "a:b:80", "名前:7946"]
)
def test_good_addresses_are_accepted(address: str) -> None:
    p = Packet("n0", PingReq(1, "n1", address), (Alive("n1", address, 0),))
    assert decode_packet(encode_packet(p)) == p
    row = [MemberState("n1", address, 0, Status.ALIVE)]
    assert decode_states(encode_states(row)) == (row, False)


@pytest.mark.parametrize(
    "address", ["n1", "n1:", ":7946", "h:0", "h:65536", "h:http", "h:-1", "h:٣", "h: 80", "h:+80"]
)
def test_bad_addresses_are_rejected(address: str) -> None:
    """A hostile address must never reach the socket layer."""
    for data in (
        encode_packet(Packet("n0", PingReq(1, "n1", address))),
        encode_packet(Packet("n0", None, (Alive("n1", address, 0),))),
    ):
        with pytest.raises(DecodeError):
            decode_packet(data)
    with pytest.raises(DecodeError):
        decode_states(encode_states([MemberState("n1", address, 0, Status.ALIVE)]))


@pytest.mark.parametrize(
    "update",
    [
        Alive("n1", "h:1", MAX_INCARNATION),
        Suspect("n1", MAX_INCARNATION, "n2"),
        Dead("n1", 2**63 - 1, "n2"),
    ],
)
def test_incarnation_above_the_limit_is_rejected(update: Any) -> None:
    with pytest.raises(DecodeError):
        decode_packet(encode_packet(Packet("n0", None, (update,))))


def test_incarnation_just_below_the_limit_round_trips() -> None:
    p = Packet("n0", None, (Alive("n1", "h:1", MAX_INCARNATION - 1),))
    assert decode_packet(encode_packet(p)) == p


# --- property tests ---------------------------------------------------------------------

names = st.text(min_size=1, max_size=256)
uints = st.integers(min_value=0, max_value=2**63 - 1)
incs = st.integers(min_value=0, max_value=MAX_INCARNATION - 1)
addrs = st.builds(
    "{}:{}".format, st.text(min_size=1, max_size=200), st.integers(min_value=1, max_value=65535)
)
primaries = st.one_of(
    st.none(),
    st.builds(Ping, uints, names),
    st.builds(Ack, uints),
    st.builds(PingReq, uints, names, addrs),
    st.builds(Nack, uints),
)
updates = st.one_of(
    st.builds(Alive, names, addrs, incs),
    st.builds(Suspect, names, incs, names),
    st.builds(Dead, names, incs, names),
)
packets = st.builds(Packet, names, primaries, st.lists(updates, max_size=20).map(tuple))
member_states = st.builds(MemberState, names, addrs, incs, st.sampled_from(list(Status)))


@FUZZ
@given(packets)
def test_generated_packets_round_trip(p: Packet) -> None:
    assert decode_packet(encode_packet(p)) == p


@FUZZ
@given(st.lists(member_states, max_size=20), st.booleans())
def test_generated_states_round_trip(states: list[MemberState], join: bool) -> None:
    assert decode_states(encode_states(states, join=join)) == (states, join)


def _decodes_or_rejects(decode: Any, data: bytes) -> None:
    with contextlib.suppress(DecodeError):  # the only acceptable failure
        decode(data)


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash_decode_packet(data: bytes) -> None:
    _decodes_or_rejects(decode_packet, data)


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash_decode_states(data: bytes) -> None:
    _decodes_or_rejects(decode_states, data)


# Random bytes rarely get past msgpack; these strategies build msgpack values shaped almost
# like real messages, so every validation branch of the decoder is exercised.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=300),
    st.binary(max_size=8),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
tags = st.integers(min_value=-1, max_value=9)
fields = st.one_of(junk, names, addrs, uints, incs)
near_primary = st.one_of(
    junk,
    st.tuples(tags, st.lists(fields, max_size=4)).map(lambda t: [t[0], *t[1]]),
)
near_update = st.one_of(junk, st.tuples(tags, fields, fields, fields).map(list))
near_packet = st.tuples(
    st.sampled_from([CODEC_VERSION, CODEC_VERSION, 0, 2, True]),
    names | junk,
    near_primary,
    st.lists(near_update, max_size=6) | junk,
).map(list)
near_row = st.one_of(
    junk,
    st.tuples(fields, fields, fields, st.integers(-2, 5) | junk).map(list),
    st.lists(fields, max_size=6),
)
near_states = st.tuples(
    st.sampled_from([CODEC_VERSION, CODEC_VERSION, 0, 2]),
    st.booleans() | junk,
    st.lists(near_row, max_size=5),
).map(list)


@FUZZ
@given(near_packet)
def test_near_valid_packets_decode_or_raise_decode_error(obj: Any) -> None:
    _decodes_or_rejects(decode_packet, _pack(obj))


@FUZZ
@given(near_states)
def test_near_valid_push_pull_bodies_decode_or_raise_decode_error(obj: Any) -> None:
    _decodes_or_rejects(decode_states, _pack(obj))


@FUZZ
@given(packets, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_corrupted_packets_decode_or_raise_decode_error(p: Packet, pos: int, byte: int) -> None:
    data = bytearray(encode_packet(p))
    data[pos % len(data)] = byte
    _decodes_or_rejects(decode_packet, bytes(data))
    _decodes_or_rejects(decode_packet, bytes(data[: pos % len(data)]))
