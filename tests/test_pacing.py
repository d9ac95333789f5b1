"""Pacing: a worker gets its queued batch only once its running batch is expected to end
within the lead time (late binding; see the scheduler simulation for what it buys)."""

from __future__ import annotations

import pytest

from idunno.control.pacing import SMOOTHING, Pacing


def paced(pace: float = 0.1) -> Pacing:
    """A worker w whose resnet batches took `pace` s per query, now running one since t=10."""
    p = Pacing(lead_s=0.1)
    p.dispatched("w", 0, 1.0)
    p.replied("w", "resnet", 8, busy_s=8 * pace, still_held=0, now=2.5)  # its first batch
    p.dispatched("w", 0, 10.0)
    return p


def test_an_idle_worker_gets_one_batch() -> None:
    assert Pacing().room("w", [], 0.0) == (1, None)


def test_without_an_estimate_the_second_batch_goes_at_once() -> None:
    p = Pacing()
    p.dispatched("w", 0, 0.0)
    assert p.room("w", [("resnet", 8)], 0.1) == (2, None)


def test_the_second_batch_waits_until_the_running_one_nears_its_end() -> None:
    p = paced(0.1)
    assert p.expected_end("w", "resnet", 8) == pytest.approx(10.8)
    room, ask_at = p.room("w", [("resnet", 8)], 10.2)
    assert room == 1 and ask_at == pytest.approx(10.7)
    assert p.room("w", [("resnet", 8)], 10.71) == (2, None)
    assert p.room("w", [("resnet", 8), ("alexnet", 8)], 10.2) == (2, None)  # already full


def test_a_reply_starts_the_next_held_batch_and_updates_the_pace() -> None:
    p = paced(0.1)
    p.dispatched("w", 1, 10.5)  # queued behind the running one: does not start it
    p.replied("w", "resnet", 8, busy_s=1.2, still_held=1, now=11.4)  # 0.15 s per query
    pace = 0.1 + SMOOTHING * (0.15 - 0.1)
    assert p.expected_end("w", "resnet", 4) == pytest.approx(11.4 + 4 * pace)


def test_the_pace_is_the_inference_time_not_the_gap_between_replies() -> None:
    """A worker that waited for its next batch (a gap between replies) must not be judged
    slower for it, or each late batch would make the next one later."""
    p = paced(0.1)
    p.replied("w", "resnet", 8, busy_s=0.8, still_held=0, now=13.0)  # 3 s after it began
    p.dispatched("w", 0, 13.5)
    assert p.expected_end("w", "resnet", 8) == pytest.approx(13.5 + 0.8)


def test_paces_are_per_worker_and_model() -> None:
    p = paced(0.1)
    assert p.expected_end("w", "alexnet", 8) is None
    assert p.room("w", [("alexnet", 8)], 10.2) == (2, None)
    assert p.expected_end("v", "resnet", 8) is None


def test_a_failed_worker_starts_over() -> None:
    p = paced(0.1)
    p.forget("w")
    assert p.expected_end("w", "resnet", 8) is None
    assert p.room("w", [("resnet", 8)], 10.2) == (2, None)
