"""The chaos suite's history format and checker (idunno.testing.chaos.history and .checker):
each anomaly on a small hand-written history, tricky histories a correct store produces, and
histories generated from a linearizable in-memory store (valid, then mutated)."""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from idunno.testing.chaos import checker
from idunno.testing.chaos.checker import Verdict, check, client_ops
from idunno.testing.chaos.history import (
    DELETE,
    ELECTIONS,
    FAIL,
    FINAL,
    GET,
    INFO,
    INVOKE,
    JOBS,
    MEMBERS,
    NEMESIS,
    OK,
    PUT,
    READ,
    REFERENCE,
    RESULTS,
    SCHEDULE,
    SUBMIT,
    TRUTH,
    HistoryWriter,
    Record,
    read_history,
    write_history,
)
from idunno.testing.chaos.schedule import make_schedule
from idunno.testing.jobs import DIGITS

FINAL_T = 100.0


def sha(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


class H:
    """A hand-written history. Times are explicit; records are sorted by time when checked."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def add(self, t: float, process: str, type_: str, f: str, name: str | None, **value: Any) -> H:
        self.records.append(Record(t, process, type_, f, name, value))
        return self

    def _end(self, p: str, f: str, name: str, end: float, type_: str | None, **value: Any) -> H:
        """The completion: `type_` ok (with value), fail or info; None leaves the op pending."""
        if type_ == OK:
            return self.add(end, p, OK, f, name, **value)
        return self if type_ is None else self.add(end, p, type_, f, name)

    def put(
        self,
        p: str,
        name: str,
        data: str,
        span: tuple[float, float],
        v: int,
        type_: str | None = OK,
    ) -> H:
        self.add(span[0], p, INVOKE, PUT, name, sha256=sha(data), size=len(data))
        return self._end(p, PUT, name, span[1], type_, version=v, sha256=sha(data))

    def get(self, p: str, name: str, span: tuple[float, float], v: int = 0, data: str = "") -> H:
        """A get that returned version v with `data` (v 0: not found)."""
        self.add(span[0], p, INVOKE, GET, name)
        return self.add(span[1], p, OK, GET, name, **_answer(v, data))

    def delete(
        self, p: str, name: str, span: tuple[float, float], v: int, type_: str | None = OK
    ) -> H:
        self.add(span[0], p, INVOKE, DELETE, name)
        return self._end(p, DELETE, name, span[1], type_, deleted_version=v)

    def final(
        self, name: str, v: int = 0, data: str = "", nodes: Sequence[str] = ("n1", "n2")
    ) -> H:
        for i, node in enumerate(nodes):
            self.add(FINAL_T + i / 100, FINAL, OK, READ, name, node=node, **_answer(v, data))
        return self

    def final_value(self, f: str, **value: Any) -> H:
        return self.add(FINAL_T, FINAL, OK, f, None, **value)

    def check(self) -> Verdict:
        return check(sorted(self.records, key=lambda r: r.t))


def _answer(v: int, data: str) -> dict[str, Any]:
    return {"version": v, "sha256": sha(data)} if v else {"missing": True}


def assert_valid(verdict: Verdict) -> None:
    assert verdict.ok, "\n".join(f"{a.kind}: {a.detail}" for a in verdict.anomalies)
    assert verdict.anomalies == []


# --- each anomaly -------------------------------------------------------------------------------


def test_lost_write_final_not_found() -> None:
    verdict = H().put("c0", "f", "A", (0, 1), 1).final("f").check()
    assert verdict.kinds() == {checker.LOST_WRITE}
    assert "f: put v1 by c0 [t=0.000..1.000] is lost" in verdict.anomalies[0].detail
    assert "final read on n1, n2" in verdict.anomalies[0].detail


def test_lost_write_final_older_version() -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).put("c1", "f", "B", (2, 3), 2).final("f", 1, "A")
    assert h.check().kinds() == {checker.LOST_WRITE}


def test_lost_write_not_excused_by_a_delete_numbered_below() -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).delete("c1", "f", (0.5, 0.8), 0)
    h.put("c0", "f", "B", (2, 3), 2).final("f")
    assert h.check().kinds() == {checker.LOST_WRITE}


@pytest.mark.parametrize(
    "mistake",
    ["other bytes for an acknowledged version", "bytes nobody put", "unacknowledged reads differ"],
)
def test_wrong_bytes(mistake: str) -> None:
    h = H().put("c0", "f", "A", (0, 1), 1)
    if mistake == "other bytes for an acknowledged version":
        h.get("c1", "f", (2, 3), 1, "B").final("f", 1, "A")
    elif mistake == "bytes nobody put":
        h.get("c1", "f", (2, 3), 2, "Z").final("f", 2, "Z")
    else:
        h.put("c1", "f", "X", (2, 3), 0, INFO).put("c2", "f", "Y", (2, 3), 0, INFO)
        h.get("c3", "f", (4, 5), 2, "X").get("c3", "f", (6, 7), 2, "Y").final("f", 2, "Y")
    verdict = h.check()
    assert verdict.kinds() == {checker.WRONG_BYTES}, verdict.anomalies


def test_wrong_bytes_in_an_acknowledgement() -> None:
    h = H().add(0, "c0", INVOKE, PUT, "f", sha256=sha("A"), size=1)
    h.add(1, "c0", OK, PUT, "f", version=1, sha256=sha("B")).final("f", 1, "A")
    verdict = h.check()
    assert verdict.kinds() == {checker.WRONG_BYTES}
    assert "was acknowledged with sha256" in verdict.anomalies[0].detail


def test_wrong_bytes_read_before_its_put() -> None:
    h = H().get("c1", "f", (0, 1), 1, "A").put("c0", "f", "A", (2, 3), 1).final("f", 1, "A")
    assert h.check().kinds() == {checker.WRONG_BYTES}


@pytest.mark.parametrize("answer", ["older version", "not found", "not found, delete below"])
def test_stale_read_after_ack(answer: str) -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).put("c0", "f", "B", (2, 3), 2)
    if answer == "older version":
        h.get("c1", "f", (4, 5), 1, "A")
    elif answer == "not found":
        h.get("c1", "f", (4, 5))
    else:  # the delete's tombstone (v0 < v2) cannot hide v2
        h.delete("c2", "f", (0.5, 0.9), 0).get("c1", "f", (4, 5))
    verdict = h.final("f", 2, "B").check()
    assert verdict.kinds() == {checker.STALE_READ}, verdict.anomalies
    assert "get by c1 [t=4.000..5.000] returned" in verdict.anomalies[0].detail
    assert "after put v2 by c0 [t=2.000..3.000]" in verdict.anomalies[0].detail


@pytest.mark.parametrize("same_process", [True, False])
def test_version_went_back(same_process: bool) -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).put("c1", "f", "B", (2, 3), 0, INFO)
    h.get("c2", "f", (4, 5), 2, "B").get("c2" if same_process else "c3", "f", (6, 7), 1, "A")
    verdict = h.final("f", 2, "B").check()
    assert verdict.kinds() == {checker.WENT_BACK}
    assert "after get by c2 [t=4.000..5.000] returned v2" in verdict.anomalies[0].detail


def test_version_went_back_to_not_found() -> None:
    h = H().put("c1", "f", "B", (2, 3), 0, INFO)
    h.get("c2", "f", (4, 5), 1, "B").get("c2", "f", (6, 7)).final("f", 1, "B")
    assert h.check().kinds() == {checker.WENT_BACK}


def test_resurrection_by_version() -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).delete("c1", "f", (2, 3), 2)
    verdict = h.get("c2", "f", (4, 5), 1, "A").final("f").check()
    assert verdict.kinds() == {checker.RESURRECTION}
    assert "delete v2 by c1 [t=2.000..3.000] hid every version" in verdict.anomalies[0].detail


def test_resurrection_by_bytes() -> None:
    """Old bytes under a new number: no put could have written them as v3."""
    h = H().put("c0", "f", "A", (0, 1), 1).delete("c1", "f", (2, 3), 2)
    verdict = h.final("f", 3, "A").check()
    assert verdict.kinds() == {checker.RESURRECTION}
    assert "with the bytes of put v1 by c0" in verdict.anomalies[0].detail


@pytest.mark.parametrize("duplicate", [True, False])
def test_version_not_increasing(duplicate: bool) -> None:
    h = H().put("c0", "f", "A", (0, 1), 2)
    if duplicate:
        h.put("c1", "f", "B", (0.5, 1.5), 2)
    else:  # invoked after v2 was acknowledged, yet numbered below
        h.put("c1", "f", "B", (2, 3), 1)
    verdict = h.final("f", 2, "A").check()
    assert verdict.kinds() == {checker.VERSION_ORDER}, verdict.anomalies


def test_final_disagreement() -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).put("c1", "f", "B", (2, 3), 0, INFO)
    h.final("f", 2, "B", nodes=["n1"]).final("f", 1, "A", nodes=["n2", "n3"])
    verdict = h.check()
    assert verdict.kinds() == {checker.FINAL_DISAGREEMENT}
    detail = verdict.anomalies[0].detail
    assert "final read on n1: v2" in detail and "final read on n2, n3: v1" in detail


# --- jobs, elections, membership ----------------------------------------------------------------


def result(index: int, query: str | None = None, **extra: Any) -> dict[str, Any]:
    row = {"index": index, "query": str(index) if query is None else query, "error": None}
    row.update(class_ids=[index % 10, 0], scores=[0.9, 0.1], worker="n2", epoch=1)
    return {**row, **extra}


def job_history(dataset: str, results: list[dict[str, Any]] | None, queries: int = 3) -> H:
    h = H().add(1, JOBS, INVOKE, SUBMIT, None, model="digits_mlp", dataset=dataset)
    h.add(2, JOBS, OK, SUBMIT, None, job="j1", model="digits_mlp", dataset=dataset, queries=queries)
    if results is not None:
        h.final_value(RESULTS, job="j1", results=results)
    reference = {"model": "digits_mlp", "class_ids": [[0, 0], [1, 0], [2, 0]]}
    return h.final_value(REFERENCE, **reference, scores=[[0.9, 0.1]] * 3, label=[0, 1, 2])


@pytest.mark.parametrize(
    ("dataset", "results", "kind"),
    [
        ("other", [result(0), result(1)], checker.QUERY_MISSING),
        ("other", None, checker.QUERY_MISSING),  # no results recorded at all
        ("other", [result(0), result(1), result(1), result(2)], checker.QUERY_DUPLICATED),
        ("other", [result(0), result(1, query="7"), result(2)], checker.WRONG_RESULT),
        ("other", [result(0), result(1, error="boom"), result(2)], checker.WRONG_RESULT),
        ("other", [result(0), result(1), result(2), result(3)], checker.WRONG_RESULT),
        (DIGITS, [result(0), result(1, class_ids=[7, 0]), result(2)], checker.WRONG_RESULT),
        (DIGITS, [result(0), result(1, scores=[0.8, 0.2]), result(2)], checker.WRONG_RESULT),
    ],
)
def test_job_anomalies(dataset: str, results: list[dict[str, Any]] | None, kind: str) -> None:
    verdict = job_history(dataset, results).check()
    assert verdict.kinds() == {kind}, verdict.anomalies
    assert verdict.anomalies[0].detail.startswith("job j1 (digits_mlp on ")


def test_jobs_that_answer_every_query_once_and_right() -> None:
    rows = [result(2), result(0), result(1)]
    verdict = job_history(DIGITS, rows).check()
    assert_valid(verdict)
    assert verdict.stats["queries_checked"] == 3
    assert verdict.stats["results_vs_reference"] == 3
    # the reference only applies to the digits dataset: another dataset's answers are not compared
    other = job_history("other", [result(0, class_ids=[5]), result(1), result(2)]).check()
    assert_valid(other)
    assert other.stats["results_vs_reference"] == 0


def test_a_reference_of_another_dataset() -> None:
    h = job_history("other", [result(0), result(1, class_ids=[7, 0]), result(2)])
    h.final_value(
        REFERENCE,
        model="digits_mlp",
        dataset="other",
        class_ids=[[0, 0], [1, 0], [2, 0]],
        scores=[[0.9, 0.1]] * 3,
        label=[0, 1, 2],
    )
    verdict = h.check()
    assert verdict.kinds() == {checker.WRONG_RESULT}
    assert "query 1: top-1 (7,) but the model's label is 1" in verdict.anomalies[0].detail


def elections(node: str, *won: tuple[int, str]) -> dict[str, Any]:
    events = [{"epoch": e, "coordinator": c, "t": 10.0 + e} for e, c in won]
    return {"node": node, "events": events}


def test_two_coordinators() -> None:
    h = H().final_value(ELECTIONS, **elections("n1", (1, "n1"), (3, "n1")))
    h.final_value(ELECTIONS, **elections("n2", (2, "n2"), (3, "n2")))
    verdict = h.check()
    assert verdict.kinds() == {checker.TWO_COORDINATORS}
    assert verdict.anomalies[0].detail.startswith("epoch 3 elected n1 (logged by n1 at t=13.0)")


def test_one_coordinator_per_epoch_logged_by_many() -> None:
    h = H().final_value(ELECTIONS, **elections("n1", (1, "n1"), (2, "n3")))
    h.final_value(ELECTIONS, node="n2", events=[{"epoch": None, "coordinator": "n2", "t": 1.0}])
    assert_valid(h.final_value(ELECTIONS, **elections("n3", (2, "n3"))).check())


def members(node: str, **view: str) -> dict[str, Any]:
    return {"node": node, "view": view}


def test_membership_diverged() -> None:
    h = H().final_value(TRUTH, alive=["n1", "n2", "n3"], dead=["n4"])
    h.final_value(MEMBERS, **members("n1", n1="alive", n2="alive", n3="alive", n4="failed"))
    h.final_value(MEMBERS, **members("n2", n1="alive", n2="alive", n3="suspected", n4="alive"))
    h.final_value(MEMBERS, **members("n3", n1="alive", n2="alive", n3="alive"))  # n4 gone: fine
    h.final_value(MEMBERS, **members("n4", n4="alive"))  # a dead node's view does not count
    verdict = h.check()
    assert verdict.kinds() == {checker.MEMBERSHIP_DIVERGED}
    assert [a.detail for a in verdict.anomalies] == [
        "n2's view at t=100.000: n3 is suspected (alive), n4 is alive (dead)"
    ]


# --- valid tricky histories ---------------------------------------------------------------------


def test_concurrent_put_then_delete_numbered_after() -> None:
    h = H().put("c0", "f", "A", (0, 1), 1)
    h.put("c1", "f", "B", (2, 5), 2).delete("c2", "f", (3, 6), 3)
    h.get("c3", "f", (4, 4.5), 2, "B").get("c3", "f", (7, 8)).final("f")
    assert_valid(h.check())


def test_concurrent_delete_then_put_numbered_after() -> None:
    h = H().put("c0", "f", "A", (0, 1), 1)
    h.delete("c1", "f", (2, 5), 2).put("c2", "f", "B", (3, 6), 3)
    h.get("c3", "f", (2.5, 3.5), 1, "A").get("c3", "f", (4, 4.5)).get("c3", "f", (7, 8), 3, "B")
    assert_valid(h.final("f", 3, "B").check())


def test_concurrent_delete_invoked_first_numbered_last() -> None:
    """The delete was invoked before the put but numbered after it: it hides the put."""
    h = H().put("c0", "f", "A", (0, 1), 1)
    h.delete("c1", "f", (2, 5), 4).put("c2", "f", "B", (3, 4), 3)
    assert_valid(h.get("c3", "f", (4.5, 4.8), 3, "B").get("c3", "f", (6, 7)).final("f").check())


@pytest.mark.parametrize("took_effect", [True, False])
@pytest.mark.parametrize("outcome", [INFO, None])  # None: no completion recorded
def test_indeterminate_put(took_effect: bool, outcome: str | None) -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).put("c1", "f", "B", (2, 3), 0, outcome)
    if took_effect:
        h.get("c2", "f", (4, 5), 2, "B").final("f", 2, "B")
    else:  # and the version it took is skipped
        h.get("c2", "f", (4, 5), 1, "A").put("c0", "f", "C", (6, 7), 3)
        h.get("c2", "f", (8, 9), 3, "C").final("f", 3, "C")
    assert_valid(h.check())


def test_indeterminate_put_takes_effect_after_the_client_gave_up() -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).put("c1", "f", "B", (2, 3), 0, INFO)
    h.get("c2", "f", (4, 5), 1, "A").get("c2", "f", (6, 7), 2, "B").final("f", 2, "B")
    assert_valid(h.check())


def test_reads_concurrent_with_a_put_see_old_or_new() -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).put("c1", "f", "B", (2, 6), 2)
    h.get("c2", "f", (3, 4), 1, "A").get("c3", "f", (3.5, 5), 2, "B")
    h.get("c2", "f", (4.5, 5.5), 2, "B")  # after a read saw v2: v2 at least
    h.get("c4", "f", (3.2, 7), 1, "A")  # invoked before that read ended: may be older
    assert_valid(h.final("f", 2, "B").check())


def test_concurrent_puts_numbered_against_their_invocation_order() -> None:
    h = H().put("c0", "f", "A", (0, 5), 2).put("c1", "f", "B", (1, 2), 1)
    h.get("c2", "f", (3, 4), 1, "B").get("c2", "f", (6, 7), 2, "A")
    assert_valid(h.final("f", 2, "A").check())


def test_delete_then_put_of_the_same_bytes() -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).delete("c1", "f", (2, 3), 2)
    h.get("c2", "f", (4, 5)).put("c0", "f", "A", (6, 7), 3).get("c2", "f", (8, 9), 3, "A")
    assert_valid(h.final("f", 3, "A").check())


def test_old_versions_collected() -> None:
    h = H()
    for v in range(1, 9):
        h.put("c0", "f", f"data {v}", (2 * v, 2 * v + 1), v).get(
            "c1", "f", (2 * v + 1.5, 2 * v + 1.8), v, f"data {v}"
        )
    assert_valid(h.final("f", 8, "data 8").check())


def test_indeterminate_delete_may_hide_a_later_put() -> None:
    """A delete whose gateway paused before numbering it may resume after a later put."""
    h = H().put("c0", "f", "A", (0, 1), 1).delete("c1", "f", (1.5, 2), 0, INFO)
    h.put("c0", "f", "B", (3, 4), 2).get("c2", "f", (5, 6), 2, "B").get("c2", "f", (7, 8))
    assert_valid(h.final("f").check())


def test_failed_operations_have_no_effect() -> None:
    h = H().delete("c0", "f", (0, 1), 0, FAIL).get("c1", "f", (2, 3))
    h.put("c0", "f", "A", (4, 5), 0, FAIL).put("c0", "f", "B", (6, 7), 1)
    assert_valid(h.final("f", 1, "B").check())
    lost = H().put("c0", "f", "A", (0, 1), 1).delete("c1", "f", (2, 3), 0, FAIL).final("f")
    assert lost.check().kinds() == {checker.LOST_WRITE}  # a failed delete excuses nothing


def test_failed_final_reads_tell_nothing() -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).final("f", 1, "A", nodes=["n1"])
    h.add(FINAL_T + 1, FINAL, OK, READ, "f", node="n2", error="timed out")
    verdict = h.check()
    assert_valid(verdict)
    assert verdict.stats["final_reads"] == 2 and verdict.stats["final_read_errors"] == 1


def test_names_are_independent() -> None:
    h = H().put("c0", "f", "A", (0, 1), 1).put("c0", "g", "A", (2, 3), 1)
    h.delete("c1", "g", (4, 5), 2).get("c1", "f", (6, 7), 1, "A")
    assert_valid(h.final("f", 1, "A").final("g").check())


# --- stats and malformed histories --------------------------------------------------------------


def test_stats_and_verdict_json() -> None:
    schedule = make_schedule(5, ["n1", "n2", "n3", "n4", "n5"], 30.0)
    h = H().add(0, NEMESIS, INFO, SCHEDULE, None, **schedule.to_json())
    h.add(0.5, NEMESIS, INFO, "kill", None, targets=["n2"]).put("c0", "f", "A", (1, 2), 1)
    h.put("c1", "f", "B", (1, 2), 0, INFO).get("c0", "f", (3, 4), 1, "A").final("f")
    verdict = h.check()
    stats = verdict.stats
    assert stats["ops"] == {"get": {"ok": 1}, "put": {"ok": 1, "info": 1}}
    assert stats["faults"] == schedule.counts()
    assert stats["nemesis_actions"] == {"kill": 1}
    assert stats["final_reads"] == 2 and stats["names"] == 1 and stats["indeterminate"] == 1
    assert stats["anomalies"] == {checker.LOST_WRITE: 1}  # final: not found
    again = json.loads(json.dumps(verdict.to_json()))
    assert again["ok"] is False and again["anomalies"][0]["kind"] == checker.LOST_WRITE


@pytest.mark.parametrize(
    ("records", "error"),
    [
        ([Record(1, "c0", OK, PUT, "f", {"version": 1})], "ends nothing"),
        (
            [Record(1, "c0", INVOKE, GET, "f"), Record(2, "c0", INVOKE, GET, "f")],
            "invoked twice",
        ),
        ([Record(1, "c0", INVOKE, GET, "f"), Record(2, "c0", OK, PUT, "f")], "ends nothing"),
        ([Record(1, "c0", INVOKE, GET, None)], "on no name"),
    ],
)
def test_unpaired_client_records_are_rejected(records: list[Record], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check(records)


# --- the history file ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def test_history_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    with HistoryWriter(path, clock=FakeClock()) as history:
        written = [
            history.op("c0", INVOKE, PUT, "f/a", {"sha256": sha("A"), "size": 1}),
            history.op("c0", OK, PUT, "f/a", {"version": 1, "sha256": sha("A")}),
            history.op(NEMESIS, INFO, "network", None, {"blocked": [["n1", "n2"]], "loss": []}),
            history.op(FINAL, OK, READ, "f/a", {"node": "n1", "missing": True}),
        ]
        history.write(Record(7.5, JOBS, OK, SUBMIT, None, {"job": "j1", "queries": 3}))
    assert [r.t for r in written] == [0.25, 0.5, 0.75, 1.0]
    assert read_history(path) == [
        *written,
        Record(7.5, JOBS, OK, SUBMIT, None, {"job": "j1", "queries": 3}),
    ]
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {
        "t": 0.25,
        "process": "c0",
        "type": "invoke",
        "f": "put",
        "name": "f/a",
        "value": {"sha256": sha("A"), "size": 1},
    }
    with pytest.raises(ValueError, match="closed"):
        history.op("c0", INVOKE, GET, "f/a")


def test_history_writer_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"

    def client(history: HistoryWriter, process: str) -> None:
        for i in range(200):
            history.op(process, INVOKE, GET, f"f/{i}")
            history.op(process, OK, GET, f"f/{i}", {"missing": True})

    with HistoryWriter(path) as history:
        threads = [threading.Thread(target=client, args=(history, f"c{i}")) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    records = read_history(path)
    assert len(records) == 1600
    assert [r.t for r in records] == sorted(r.t for r in records)
    assert len(client_ops(records)) == 800


def test_malformed_history_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    good = Record(1.0, "c0", INVOKE, GET, "f").dumps()
    path.write_text(f"{good}\n\n{good[:-5]}\n")
    with pytest.raises(ValueError, match=r"history.jsonl:3: not a history record"):
        read_history(path)
    path.write_text('{"t": 1, "process": "c0", "type": "done", "f": "get"}\n')
    with pytest.raises(ValueError, match="type 'done'"):
        read_history(path)
    with (
        HistoryWriter(tmp_path / "other.jsonl") as history,
        pytest.raises(ValueError, match="type 'begin'"),
    ):
        history.op("c0", "begin", GET, "f")


# --- generated histories ------------------------------------------------------------------------

KEEP = 5  # versions the store keeps per name
DETACH = "detach"  # an operation yields this when its client gives up and it carries on alone


@dataclass
class ModelFile:
    """One name in a linearizable store: one counter numbers versions and tombstones."""

    counter: int = 0
    versions: dict[int, str] = field(default_factory=dict)
    tomb: int = 0

    def newest(self) -> tuple[int, str] | None:
        if not self.versions:
            return None
        v = max(self.versions)
        return v, self.versions[v]

    def number(self, rng: random.Random) -> int:
        self.counter += rng.choice([1, 1, 1, 2])  # the store may skip numbers
        return self.counter

    def commit(self, v: int, digest: str) -> None:
        if v > self.tomb:
            self.versions[v] = digest
        for old in sorted(self.versions)[:-KEEP]:
            del self.versions[old]

    def tombstone(self, v: int) -> None:
        self.tomb = max(self.tomb, v)
        self.versions = {k: d for k, d in self.versions.items() if k > self.tomb}


Steps = Iterator[str | None]
FATES = ("ok", "fail", "lost", "numbered", "late", "done")  # see ModelRun.write
FATE_WEIGHTS = (12, 1, 2, 2, 2, 2)


class ModelRun:
    """Clients running random puts, gets and deletes on a linearizable in-memory store. Each
    operation is a generator: one step per scheduler tick (the clock advances every tick), an
    effect or a record per step, so operations of different clients interleave at random.
    Unknown outcomes take effect or not, before or after the client records "info"."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.t = 0.0
        self.files: dict[str, ModelFile] = defaultdict(ModelFile)
        self.written: dict[str, list[str]] = defaultdict(list)
        self.records: list[Record] = []
        self.names = [f"data/{i}.bin" for i in range(self.rng.randint(1, 3))]

    def record(self, process: str, type_: str, f: str, name: str, value: dict[str, Any]) -> None:
        self.records.append(Record(round(self.t, 6), process, type_, f, name, value))

    def run(self) -> list[Record]:
        clients = {f"c{i}": self.rng.randint(5, 25) for i in range(self.rng.randint(2, 5))}
        current: dict[str, Steps] = {}
        background: list[Steps] = []
        while clients or background:
            self.t += self.rng.uniform(0.001, 0.05)
            who = self.rng.choice([*clients, *range(len(background))])
            if isinstance(who, int):
                if next(background[who], DETACH) == DETACH:  # finished
                    background.pop(who)
                continue
            if who not in current:
                clients[who] -= 1
                current[who] = self.operation(who, last=clients[who] == 0)
            step = next(current[who], "end")
            if step in (DETACH, "end"):
                if step == DETACH:
                    background.append(current[who])
                del current[who]
                if clients[who] == 0:
                    del clients[who]
            if self.rng.random() < 0.01 and background:  # an abandoned op never finishes
                background.pop(self.rng.randrange(len(background)))
        self.finals()
        return self.records

    def operation(self, process: str, last: bool) -> Steps:
        name = self.rng.choice(self.names)
        f = self.rng.choices([PUT, GET, DELETE], [4, 4, 2])[0]
        fate = self.rng.choices(FATES, FATE_WEIGHTS)[0]
        if f != GET and last and self.rng.random() < 0.3:
            fate = "hang"  # no completion recorded at all (only a process's last op)
        if f == GET:
            return self.get(process, name, fate)
        return self.write(process, f, name, fate)

    def get(self, process: str, name: str, fate: str) -> Steps:
        self.record(process, INVOKE, GET, name, {})
        yield None
        if fate in ("fail", "lost"):
            self.record(process, FAIL if fate == "fail" else INFO, GET, name, {})
            return
        found = self.files[name].newest()
        yield None
        answer = {"version": found[0], "sha256": found[1]} if found else {"missing": True}
        self.record(process, OK, GET, name, answer)

    def write(self, process: str, f: str, name: str, fate: str) -> Steps:
        """A put or delete: number it, then commit it. fail: refused before any effect; lost:
        info with no effect; numbered: info after taking a number only; late: info, then it
        takes effect later; hang: no completion, may take effect later; done: info after the
        effect; ok: acknowledged."""
        file = self.files[name]
        digest = self.content(name)
        self.record(process, INVOKE, f, name, {"sha256": digest, "size": 64} if f == PUT else {})
        yield None
        if fate in ("fail", "lost") or (f == DELETE and file.newest() is None):
            gone = fate in {"fail", "ok"}  # a delete of nothing: 404, not applied
            self.record(process, FAIL if gone else INFO, f, name, {})
            return
        v = file.number(self.rng)
        yield None
        if fate == "numbered":
            self.record(process, INFO, f, name, {})
            return
        if fate in ("late", "hang"):
            if fate == "late":
                self.record(process, INFO, f, name, {})
            yield DETACH
        if f == PUT:
            file.commit(v, digest)
        else:
            file.tombstone(v)
        yield None
        if fate == "ok":
            value = {"version": v, "sha256": digest} if f == PUT else {"deleted_version": v}
            self.record(process, OK, f, name, value)
        elif fate == "done":
            self.record(process, INFO, f, name, {})

    def content(self, name: str) -> str:
        """Random bytes' digest; sometimes the same bytes as an earlier put of the name."""
        if self.written[name] and self.rng.random() < 0.2:
            return self.rng.choice(self.written[name])
        digest = f"{self.rng.getrandbits(256):064x}"
        self.written[name].append(digest)
        return digest

    def finals(self) -> None:
        for name in self.names:
            found = self.files[name].newest()
            answer = {"version": found[0], "sha256": found[1]} if found else {"missing": True}
            for node in ("n1", "n2", "n3"):
                self.t += 0.01
                self.record(FINAL, OK, READ, name, {"node": node, **answer})


def generated(seed: int) -> list[Record]:
    return ModelRun(seed).run()


def test_generated_histories_are_valid() -> None:
    totals: dict[str, int] = defaultdict(int)
    for seed in range(300):
        records = generated(seed)
        verdict = check(records)
        assert verdict.ok, (seed, [f"{a.kind}: {a.detail}" for a in verdict.anomalies])
        for op in client_ops(records):
            totals[f"{op.f} {op.type}"] += 1
    # the model exercised what makes checking hard
    for what in ("put ok", "put info", "put pending", "delete ok", "delete info", "get ok"):
        assert totals[what] > 20, (what, dict(totals))


def test_generated_history_round_trip(tmp_path: Path) -> None:
    records = generated(11)
    write_history(tmp_path / "h.jsonl", records)
    assert read_history(tmp_path / "h.jsonl") == records


def final_answer(records: list[Record], name: str, value: dict[str, Any]) -> list[Record]:
    """The records with every final read of `name` answering `value` instead."""
    return [
        replace(r, value={"node": r.value["node"], **value})
        if r.process == FINAL and r.f == READ and r.name == name
        else r
        for r in records
    ]


def drop_acknowledged_write(records: list[Record]) -> list[Record] | None:
    """Lose a name's newest acknowledged put: the final reads return not found when no delete
    could have hidden it, else an older acknowledged version above every acknowledged delete."""
    ops = client_ops(records)
    for name in sorted({op.name for op in ops}):
        puts = sorted(
            (op for op in ops if op.name == name and op.f == PUT and op.acked),
            key=lambda o: o.version,
        )
        deletes = [op for op in ops if op.name == name and op.f == DELETE]
        if not puts:
            continue
        newest = puts[-1].version
        hidden = max((d.version for d in deletes if d.acked), default=0)
        if hidden < newest and not any(d.unknown for d in deletes):
            return final_answer(records, name, {"missing": True})
        older = [p for p in puts if hidden < p.version < newest]
        if older:
            return final_answer(
                records, name, {"version": older[0].version, "sha256": older[0].sha}
            )
    return None


def swap_bytes(records: list[Record]) -> list[Record] | None:
    """A get returns other bytes for the version it read."""
    for i, r in enumerate(records):
        if r.f == GET and r.type == OK and "version" in r.value:
            value = {**r.value, "sha256": sha("swapped")}
            return [*records[:i], replace(r, value=value), *records[i + 1 :]]
    return None


def resurrect(records: list[Record]) -> list[Record] | None:
    """The final reads return a version an acknowledged delete hid."""
    ops = client_ops(records)
    for d in (op for op in ops if op.f == DELETE and op.acked):
        for p in ops:
            if p.name == d.name and p.f == PUT and p.acked and p.version <= d.version:
                return final_answer(records, d.name, {"version": p.version, "sha256": p.sha})
    return None


def stale_read(records: list[Record]) -> list[Record] | None:
    """A get invoked after an acknowledged put returns an older acknowledged version (one above
    every delete acknowledged before it, so that it is stale, not resurrected)."""
    ops = client_ops(records)
    for i, r in enumerate(records):
        if r.f != GET or r.type != OK or r.name is None:
            continue
        get = next(op for op in ops if op.process == r.process and op.end == r.t)
        same = [op for op in ops if op.name == r.name and op.acked and op.end < get.start]
        puts = sorted((op for op in same if op.f == PUT), key=lambda o: o.version)
        hidden = max((op.version for op in same if op.f == DELETE), default=0)
        older = [p for p in puts if hidden < p.version < puts[-1].version] if puts else []
        if older:
            value = {"version": older[0].version, "sha256": older[0].sha}
            return [*records[:i], replace(r, value=value), *records[i + 1 :]]
    return None


@pytest.mark.parametrize(
    ("mutate", "kind"),
    [
        (drop_acknowledged_write, checker.LOST_WRITE),
        (swap_bytes, checker.WRONG_BYTES),
        (resurrect, checker.RESURRECTION),
        (stale_read, checker.STALE_READ),
    ],
)
def test_mutated_histories_are_caught(mutate: Any, kind: str) -> None:
    caught = 0
    for seed in range(300):
        mutated = mutate(generated(seed))
        if mutated is None:
            continue
        verdict = check(mutated)
        assert kind in verdict.kinds(), (seed, verdict.anomalies)
        caught += 1
    assert caught >= 50
