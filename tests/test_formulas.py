"""Table tests of the pure SWIM + Lifeguard timing formulas."""

from __future__ import annotations

import itertools
import math

import pytest

from idunno.membership.config import PRESETS, preset
from idunno.membership.formulas import (
    expected_confirmations,
    push_pull_interval,
    retransmit_limit,
    scaled,
    suspicion_min_timeout,
    suspicion_timeout,
)


@pytest.mark.parametrize(
    ("mult", "n", "interval", "expected"),
    [
        (4, 0, 0.2, 0.8),  # an empty view never gives a negative or zero scale
        (4, 1, 0.2, 0.8),
        (4, 5, 0.2, 0.8),  # log10(5) < 1: clamped to 1
        (4, 10, 0.2, 0.8),
        (4, 100, 0.2, 1.6),
        (4, 1000, 0.5, 6.0),
        (5, 10, 1.0, 5.0),
        (4, 50, 1.0, 4 * math.log10(50)),
    ],
)
def test_suspicion_min_timeout(mult: int, n: int, interval: float, expected: float) -> None:
    assert suspicion_min_timeout(mult, n, interval) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("min_s", "max_s", "confirmations", "k", "expected"),
    [
        (1.0, 6.0, 0, 2, 6.0),  # no independent confirmation: the maximum
        (1.0, 6.0, 2, 2, 1.0),  # k confirmations: the minimum
        (1.0, 6.0, 5, 2, 1.0),  # more than k never goes below the minimum
        (1.0, 6.0, 1, 2, 6.0 - 5.0 * math.log(2) / math.log(3)),
        (0.8, 4.8, 1, 2, 4.8 - 4.0 * math.log(2) / math.log(3)),
        (2.0, 12.0, 1, 1, 2.0),
        (1.0, 6.0, 0, 0, 1.0),  # no confirmations expected (tiny cluster): the minimum at once
        (1.0, 6.0, 3, 0, 1.0),
    ],
)
def test_suspicion_timeout_table(
    min_s: float, max_s: float, confirmations: int, k: int, expected: float
) -> None:
    assert suspicion_timeout(min_s, max_s, confirmations, k) == pytest.approx(expected)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_suspicion_timeout_falls_monotonically_from_max_to_min(k: int) -> None:
    min_s, max_s = 0.8, 4.8
    values = [suspicion_timeout(min_s, max_s, c, k) for c in range(k + 3)]
    assert values[0] == pytest.approx(max_s)
    assert values[k] == pytest.approx(min_s)
    assert all(a > b for a, b in itertools.pairwise(values[: k + 1]))
    assert all(v == pytest.approx(min_s) for v in values[k:])
    assert all(min_s <= v <= max_s for v in values)


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [
        (4, 10, 2),
        (4, 4, 2),  # exactly enough other members to confirm
        (4, 3, 0),  # n - 2 = 1 < k = 2: nobody can be expected to confirm
        (4, 2, 0),
        (4, 1, 0),
        (2, 10, 0),
        (1, 10, 0),  # never negative
        (5, 100, 3),
        (6, 5, 0),
        (6, 6, 4),
    ],
)
def test_expected_confirmations(mult: int, n: int, expected: int) -> None:
    assert expected_confirmations(mult, n) == expected


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [
        (4, 1, 4),
        (4, 9, 4),
        (4, 10, 8),  # ceil(log10(11)) = 2
        (4, 99, 8),
        (4, 100, 12),
        (4, 1000, 16),
        (3, 50, 6),
        (4, 0, 0),
    ],
)
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert retransmit_limit(mult, n) == expected


@pytest.mark.parametrize(
    ("base", "n", "expected"),
    [
        (20.0, 1, 20.0),
        (20.0, 32, 20.0),  # at the threshold: unchanged
        (20.0, 33, 40.0),
        (20.0, 64, 40.0),
        (20.0, 65, 60.0),
        (20.0, 128, 60.0),
        (20.0, 1024, 120.0),
        (30.0, 256, 120.0),
    ],
)
def test_push_pull_interval(base: float, n: int, expected: float) -> None:
    assert push_pull_interval(base, n) == pytest.approx(expected)


def test_push_pull_interval_never_shrinks_as_the_cluster_grows() -> None:
    values = [push_pull_interval(20.0, n) for n in range(1, 2000)]
    assert all(a <= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("timing", "score", "expected"),
    [(0.2, 0, 0.2), (0.2, 1, 0.4), (0.1, 3, 0.4), (1.0, 7, 8.0)],
)
def test_scaled(timing: float, score: int, expected: float) -> None:
    assert scaled(timing, score) == pytest.approx(expected)


def test_lan_preset_meets_the_detection_budget_on_paper() -> None:
    """The config docstring's arithmetic: min suspicion + probe interval stay well under 2.5 s."""
    cfg = preset("lan")
    n = 10
    min_s = suspicion_min_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
    assert min_s == pytest.approx(0.8)
    assert cfg.probe_timeout < cfg.probe_interval
    assert cfg.probe_timeout * cfg.nack_fraction < cfg.probe_timeout
    assert min_s + cfg.probe_interval + 3 * cfg.gossip_interval < 2.5


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_internally_consistent(name: str) -> None:
    cfg = preset(name)
    assert 0 < cfg.probe_timeout < cfg.probe_interval
    assert cfg.join_retry_min <= cfg.join_retry_max
    assert cfg.suspicion_max_mult >= 1
    assert cfg.awareness_max >= 1


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="lan") as info:
        preset("nope")
    assert "nope" in str(info.value)
