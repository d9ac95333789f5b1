"""Transport security: authenticated datagram framing, HTTP tokens, the cluster key file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idunno.membership.core import TRANSPORT_OVERHEAD
from idunno.transport import keys, tokens
from idunno.transport.packet import MAC_BYTES, MAX_DATAGRAM, OVERHEAD, Opener, seal

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = 1_700_000_000.0
PAYLOAD = b"\x94\x01\xa2n0\xc0\x90"  # a real encoded membership packet


# --- framing ----------------------------------------------------------------------------


def test_overhead_matches_what_the_core_budgets_for() -> None:
    assert OVERHEAD == 25
    assert TRANSPORT_OVERHEAD == OVERHEAD
    assert len(seal(KEY, PAYLOAD, NOW)) == len(PAYLOAD) + OVERHEAD


def test_seal_open_round_trip() -> None:
    opener = Opener(KEY)
    assert opener.open(seal(KEY, PAYLOAD, NOW), NOW + 0.5) == PAYLOAD
    assert not opener.dropped


def test_distinct_frames_with_the_same_payload_are_all_accepted() -> None:
    opener = Opener(KEY)
    frames = [seal(KEY, PAYLOAD, NOW + i * 0.001) for i in range(5)]
    assert [opener.open(f, NOW) for f in frames] == [PAYLOAD] * 5


def _flip(frame: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(frame)
    out[index] ^= 1 << bit
    return bytes(out)


@pytest.mark.parametrize("where", ["timestamp", "payload", "mac", "last"])
@pytest.mark.parametrize("bit", [0, 7])
def test_flipped_bit_is_dropped_as_bad_mac(where: str, bit: int) -> None:
    frame = seal(KEY, PAYLOAD, NOW)
    index = {"timestamp": 8, "payload": 9 + len(PAYLOAD) // 2, "mac": -MAC_BYTES, "last": -1}
    opener = Opener(KEY)
    assert opener.open(_flip(frame, index[where], bit), NOW) is None
    assert opener.dropped == {"bad_mac": 1}
    # The original still opens: a forged copy must not poison the replay cache.
    assert opener.open(frame, NOW) == PAYLOAD


def test_flipped_version_byte_is_malformed() -> None:
    opener = Opener(KEY)
    assert opener.open(_flip(seal(KEY, PAYLOAD, NOW), 0), NOW) is None
    assert opener.dropped == {"malformed": 1}


def test_wrong_key_is_bad_mac() -> None:
    opener = Opener(KEY)
    assert opener.open(seal(OTHER_KEY, PAYLOAD, NOW), NOW) is None
    assert opener.dropped == {"bad_mac": 1}


@pytest.mark.parametrize(
    ("skew", "accepted"),
    [(0.0, True), (29.0, True), (-29.0, True), (30.5, False), (-30.5, False), (3600.0, False)],
)
def test_timestamp_window(skew: float, accepted: bool) -> None:
    """A frame stamped `skew` seconds away from the receiver's clock (window 30 s)."""
    opener = Opener(KEY, window=30.0)
    out = opener.open(seal(KEY, PAYLOAD, NOW + skew), NOW)
    assert (out == PAYLOAD) is accepted
    assert opener.dropped == ({} if accepted else {"stale": 1})


def test_replayed_frame_is_dropped() -> None:
    opener = Opener(KEY)
    frame = seal(KEY, PAYLOAD, NOW)
    assert opener.open(frame, NOW) == PAYLOAD
    assert opener.open(frame, NOW + 1.0) is None
    assert opener.open(frame, NOW + 29.0) is None
    assert opener.dropped == {"replay": 2}


def test_replay_after_the_window_is_stale_not_accepted() -> None:
    """Forgetting old MACs is safe: by then the timestamp check rejects the frame."""
    opener = Opener(KEY, window=5.0)
    frame = seal(KEY, PAYLOAD, NOW)
    assert opener.open(frame, NOW) == PAYLOAD
    for t in range(1, 30):  # other traffic makes the opener forget old MACs
        opener.open(seal(KEY, PAYLOAD, NOW + t), NOW + t)
    assert opener.open(frame, NOW + 30) is None
    assert opener.dropped["stale"] == 1


def test_replay_cache_is_bounded_by_the_window() -> None:
    opener = Opener(KEY, window=1.0)
    for i in range(200):
        t = NOW + i * 0.1
        assert opener.open(seal(KEY, PAYLOAD, t), t) == PAYLOAD
    assert len(opener._seen) <= 21  # only ~2 windows' worth of MACs are remembered


@pytest.mark.parametrize("size", [0, 1, OVERHEAD - 1, OVERHEAD])
def test_too_short_is_malformed(size: int) -> None:
    opener = Opener(KEY)
    assert opener.open(seal(KEY, b"x" * 100, NOW)[:size], NOW) is None
    assert opener.dropped == {"malformed": 1}


def test_oversize_is_dropped_before_any_work() -> None:
    opener = Opener(KEY)
    big = seal(KEY, b"x" * (MAX_DATAGRAM - OVERHEAD + 1), NOW)
    assert len(big) == MAX_DATAGRAM + 1
    assert opener.open(big, NOW) is None
    assert opener.dropped == {"oversize": 1}
    fits = seal(KEY, b"x" * (MAX_DATAGRAM - OVERHEAD), NOW)
    assert opener.open(fits, NOW) is not None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=MAX_DATAGRAM + 16), st.floats(0, 4e9))
def test_open_never_raises_on_arbitrary_bytes(frame: bytes, now: float) -> None:
    opener = Opener(KEY)
    assert opener.open(frame, now) is None  # forging a MAC by chance is not an option
    assert sum(opener.dropped.values()) == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=1400), st.integers(0, 10_000), st.integers(0, 255))
def test_any_single_byte_change_is_rejected(payload: bytes, pos: int, value: int) -> None:
    frame = bytearray(seal(KEY, payload, NOW))
    pos %= len(frame)
    if frame[pos] == value:
        value ^= 0xFF
    frame[pos] = value
    opener = Opener(KEY)
    assert opener.open(bytes(frame), NOW) is None


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=MAX_DATAGRAM - OVERHEAD))
def test_any_payload_round_trips(payload: bytes) -> None:
    assert Opener(KEY).open(seal(KEY, payload, NOW), NOW) == payload


# --- tokens -----------------------------------------------------------------------------


def test_token_mint_and_check() -> None:
    token = tokens.mint(KEY, ttl=60, now=NOW)
    assert token.startswith("idn1.")
    assert tokens.check(KEY, token, now=NOW) is None
    assert tokens.check(KEY, token, now=NOW + 60) is None  # valid up to its expiry second


def test_token_with_the_wall_clock() -> None:
    assert tokens.check(KEY, tokens.mint(KEY)) is None


def test_expired_token() -> None:
    token = tokens.mint(KEY, ttl=60, now=NOW)
    reason = tokens.check(KEY, token, now=NOW + 61)
    assert reason is not None
    assert "expired" in reason


def test_token_from_another_key() -> None:
    reason = tokens.check(KEY, tokens.mint(OTHER_KEY, now=NOW), now=NOW)
    assert reason is not None
    assert "key" in reason


def test_tampered_expiry_is_rejected() -> None:
    _, expiry, mac = tokens.mint(KEY, ttl=60, now=NOW).split(".")
    forged = f"idn1.{int(expiry) + 10_000}.{mac}"
    assert tokens.check(KEY, forged, now=NOW) is not None


@pytest.mark.parametrize(
    "token",
    ["", "idn1", "idn1.123", "idn2.123.abc", "idn1.abc.def", "idn1.-5.abc", "a.b.c.d", "..."],
)
def test_malformed_token(token: str) -> None:
    reason = tokens.check(KEY, token, now=NOW)
    assert reason is not None
    assert reason.startswith("malformed token")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_check_never_raises_on_garbage(token: str) -> None:
    assert tokens.check(KEY, token, now=NOW) is not None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_check_never_raises_on_well_shaped_garbage(expiry: str, mac: str) -> None:
    assert tokens.check(KEY, f"idn1.{expiry}.{mac}", now=NOW) is not None


@pytest.mark.parametrize(
    "token",
    [
        "idn1.\u00b2.abc",  # '²'.isdigit() is True but int('²') raises
        "idn1.\u0663.abc",  # an Arabic-Indic digit
        "idn1.123.\u00e9",  # compare_digest refuses non-ASCII str
        "idn1.123.\udcff",  # a lone surrogate (undecodable header bytes)
        "idn1." + "9" * 40 + ".abc",  # an absurd expiry
    ],
)
def test_check_returns_a_reason_for_hostile_tokens(token: str) -> None:
    """These once raised ValueError or TypeError: a crafted header must get a 401, not a 500."""
    assert tokens.check(KEY, token, now=NOW) is not None


# --- cluster key ------------------------------------------------------------------------

HEX = KEY.hex()


@pytest.mark.parametrize("text", [HEX, HEX.upper(), f"  {HEX}\n", f"{HEX}\r\n"])
def test_parse_good_key(text: str) -> None:
    assert keys.parse(text, "test") == KEY


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("zz" * 32, "not hex"),
        (HEX[:-1], "not hex"),  # odd length
        (HEX[:-2], "31 bytes"),
        (HEX + "00", "33 bytes"),
        ("", "0 bytes"),
    ],
)
def test_parse_bad_key_names_the_cause_and_the_fix(text: str, cause: str) -> None:
    with pytest.raises(keys.ClusterKeyError) as info:
        keys.parse(text, "/etc/idunno/key")
    message = str(info.value)
    assert cause in message
    assert "/etc/idunno/key" in message
    assert "idunno keygen" in message
    assert "\n" not in message


def test_generate_makes_distinct_keys_of_the_right_size() -> None:
    a, b = keys.generate(), keys.generate()
    assert len(a) == keys.KEY_BYTES == 32
    assert a != b
    assert keys.parse(keys.to_text(a), "x") == a


def test_write_key_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "cluster.key"
    keys.write_key_file(path, KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load(str(path)) == KEY


def test_write_key_file_tightens_an_existing_file(tmp_path: Path) -> None:
    """O_CREAT's mode only applies to a new file: an old world-readable one must be fixed."""
    path = tmp_path / "cluster.key"
    path.write_text("old\n")
    path.chmod(0o644)
    keys.write_key_file(path, KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(keys.ENV_VAR, raising=False)
    return monkeypatch


def test_load_prefers_the_key_file(tmp_path: Path, no_env_key: pytest.MonkeyPatch) -> None:
    path, fallback = tmp_path / "k", tmp_path / "fallback"
    keys.write_key_file(path, KEY)
    keys.write_key_file(fallback, OTHER_KEY)
    no_env_key.setenv(keys.ENV_VAR, OTHER_KEY.hex())
    assert keys.load(str(path), fallback_file=fallback) == KEY


def test_load_uses_the_environment_next(tmp_path: Path, no_env_key: pytest.MonkeyPatch) -> None:
    fallback = tmp_path / "fallback"
    keys.write_key_file(fallback, OTHER_KEY)
    no_env_key.setenv(keys.ENV_VAR, KEY.hex())
    assert keys.load(None, fallback_file=fallback) == KEY


def test_load_uses_the_fallback_file_last(tmp_path: Path, no_env_key: pytest.MonkeyPatch) -> None:
    fallback = tmp_path / "fallback"
    keys.write_key_file(fallback, KEY)
    assert keys.load(None, fallback_file=fallback) == KEY
    no_env_key.setenv(keys.ENV_VAR, "")  # an empty variable counts as unset
    assert keys.load(None, fallback_file=fallback) == KEY


@pytest.mark.parametrize("with_fallback", [False, True])
def test_load_without_any_key_says_how_to_make_one(
    tmp_path: Path, no_env_key: pytest.MonkeyPatch, with_fallback: bool
) -> None:
    fallback = tmp_path / "missing" if with_fallback else None
    with pytest.raises(keys.ClusterKeyError) as info:
        keys.load(None, fallback_file=fallback)
    message = str(info.value)
    assert "idunno keygen" in message
    assert "--key-file" in message
    assert keys.ENV_VAR in message


def test_load_missing_key_file_names_it(tmp_path: Path, no_env_key: pytest.MonkeyPatch) -> None:
    no_env_key.setenv(keys.ENV_VAR, KEY.hex())  # an explicit file is never silently replaced
    missing = tmp_path / "nope.key"
    with pytest.raises(keys.ClusterKeyError, match="cannot read key file") as info:
        keys.load(str(missing))
    assert str(missing) in str(info.value)


def test_load_bad_environment_value_names_the_variable(no_env_key: pytest.MonkeyPatch) -> None:
    no_env_key.setenv(keys.ENV_VAR, "not-a-key")
    with pytest.raises(keys.ClusterKeyError) as info:
        keys.load(None)
    assert keys.ENV_VAR in str(info.value)
    assert "idunno keygen" in str(info.value)
