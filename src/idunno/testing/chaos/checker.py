"""Turn a chaos run's history (`idunno.testing.chaos.history`) into a verdict.

    verdict = check(read_history(path))
    assert verdict.ok, "\\n".join(f"{a.kind}: {a.detail}" for a in verdict.anomalies)

The store model the checks rely on: versions of one name are numbered from one increasing
counter shared by puts and deletes; a read returns the newest committed version above the
newest tombstone (or not found); a delete's tombstone hides every version <= its own number. So
the newest visible version only grows, except that a delete may hide everything (then later
versions are above the tombstone). An operation that failed ("fail") never took effect; one of
unknown outcome ("info", or no completion recorded) may take effect at any moment after its
invocation, even after the client gave up (a paused gateway resumes it later). The checks only
report what no such store could produce:

- lost_write: a final read returns a version below an acknowledged put's, or not found with no
  delete that may have hidden it (an unknown one invoked before the read, or an acknowledged one
  whose number is >= the put's);
- wrong_bytes: a read returns, for version v, bytes other than those an acknowledged put of v
  sent, or bytes no put that may have taken effect sent (no acknowledged put of v, and no
  unknown put invoked before the read ended), or two reads of the same unacknowledged v return
  different bytes; or a put is acknowledged with another sha256 than it sent;
- stale_read_after_ack: a get invoked after a put of v was acknowledged returns a version < v,
  or not found with no delete that may have hidden v (as for lost_write);
- version_went_back: a read invoked after another read (of any process) returned v returns a
  version < v, or not found with no delete that may have hidden v;
- resurrection: a read invoked after a delete was acknowledged returns a version <= its number,
  or bytes that only a put acknowledged before such a delete was invoked wrote;
- version_not_increasing: two acknowledged writes (puts and deletes) of one name got the same
  number, or one invoked after another was acknowledged got a smaller number;
- final_disagreement: final reads of one name from different nodes disagree;
- query_missing / query_duplicated / wrong_result: a submitted job does not have exactly one
  correct result per query (`testing.jobs.exactly_once_problem`), or differs from the reference
  recorded for its model and dataset (`testing.jobs.reference_mismatches`; a reference record
  without "dataset" is of the digits);
- two_coordinators: two coordinators were elected with the same epoch;
- membership_diverged: a live node's final view does not have every live node alive and every
  dead node not alive.
A read is reported once, with the first of resurrection, lost_write/stale_read_after_ack and
version_went_back that it shows (the bytes checks are separate).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from idunno.testing.chaos.history import (
    CLIENT_FS,
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
    Record,
)
from idunno.testing.chaos.schedule import Schedule
from idunno.testing.jobs import DIGITS, Reference, exactly_once_problem, reference_mismatches

LOST_WRITE = "lost_write"
WRONG_BYTES = "wrong_bytes"
STALE_READ = "stale_read_after_ack"
WENT_BACK = "version_went_back"
RESURRECTION = "resurrection"
VERSION_ORDER = "version_not_increasing"
FINAL_DISAGREEMENT = "final_disagreement"
QUERY_MISSING = "query_missing"
QUERY_DUPLICATED = "query_duplicated"
WRONG_RESULT = "wrong_result"
TWO_COORDINATORS = "two_coordinators"
MEMBERSHIP_DIVERGED = "membership_diverged"
ANOMALY_KINDS = (
    LOST_WRITE,
    WRONG_BYTES,
    STALE_READ,
    WENT_BACK,
    RESURRECTION,
    VERSION_ORDER,
    FINAL_DISAGREEMENT,
    QUERY_MISSING,
    QUERY_DUPLICATED,
    WRONG_RESULT,
    TWO_COORDINATORS,
    MEMBERSHIP_DIVERGED,
)
PENDING = "pending"  # an operation whose completion the history does not hold

T = TypeVar("T")


@dataclass(frozen=True)
class Anomaly:
    kind: str
    detail: str  # one line naming the file, job or query and the records' times

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    anomalies: list[Anomaly]
    stats: dict[str, Any]

    def kinds(self) -> set[str]:
        return {a.kind for a in self.anomalies}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "anomalies": [a.to_json() for a in self.anomalies],
            "stats": self.stats,
        }


def check(records: Iterable[Record]) -> Verdict:
    """Every anomaly the history shows, and counts of what it holds. Raises ValueError if the
    client records do not pair up (a completion without its invocation)."""
    history = list(records)
    ops = client_ops(history)
    anomalies = _store_anomalies(history, ops)
    job_anomalies, queries, compared = _job_anomalies(history)
    anomalies += job_anomalies
    anomalies += _election_anomalies(history)
    anomalies += _membership_anomalies(history)
    stats = _stats(history, ops)
    stats.update(
        queries_checked=queries,
        results_vs_reference=compared,
        anomalies=dict(Counter(a.kind for a in anomalies)),
    )
    return Verdict(not anomalies, anomalies, stats)


# --- client operations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """A client operation: its invocation and what became of it (type "pending" if the history
    holds no completion: like "info", it may or may not have taken effect)."""

    process: str
    f: str
    name: str
    start: float
    end: float  # inf while pending
    type: str
    sent: Mapping[str, Any]
    got: Mapping[str, Any]

    @property
    def acked(self) -> bool:
        return self.type == OK

    @property
    def unknown(self) -> bool:
        return self.type in (INFO, PENDING)

    @property
    def version(self) -> int:
        """The number an acknowledged put or delete got."""
        return int(self.got["deleted_version" if self.f == DELETE else "version"])

    @property
    def sha(self) -> str | None:
        """The bytes a put sent."""
        value = self.sent.get("sha256")
        return None if value is None else str(value)

    def show(self) -> str:
        """e.g. "put v5 by c1 [t=1.200..1.450]" """
        number = f" v{self.version}" if self.acked and self.f != GET else ""
        return f"{self.f}{number} by {self.process} [t={_t(self.start)}..{_t(self.end)}]"


def client_ops(records: Sequence[Record]) -> list[Op]:
    """Pair every client invocation with its completion (clients run one op at a time)."""
    open_ops: dict[str, Record] = {}
    ops: list[Op] = []
    for r in records:
        if r.process in (NEMESIS, JOBS, FINAL) or r.f not in CLIENT_FS:
            continue
        if r.type == INVOKE:
            if r.name is None:
                raise ValueError(f"history: {r.process} invoked {r.f} at t={_t(r.t)} on no name")
            if r.process in open_ops:
                raise ValueError(f"history: {r.process} invoked twice at once (t={_t(r.t)})")
            open_ops[r.process] = r
            continue
        invoke = open_ops.pop(r.process, None)
        if invoke is None or invoke.f != r.f:
            raise ValueError(f"history: {r.process}'s {r.type} {r.f} at t={_t(r.t)} ends nothing")
        ops.append(_op(invoke, r))
    ops.extend(_op(invoke, None) for invoke in open_ops.values())
    return ops


def _op(invoke: Record, done: Record | None) -> Op:
    assert invoke.name is not None  # checked by client_ops
    return Op(
        invoke.process,
        invoke.f,
        invoke.name,
        invoke.t,
        math.inf if done is None else done.t,
        PENDING if done is None else done.type,
        invoke.value,
        {} if done is None else done.value,
    )


def _t(t: float) -> str:
    return "end" if math.isinf(t) else f"{t:.3f}"


# --- reads --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    """A successful get, or the final reads of one name that returned the same thing."""

    who: str  # "get by c1" or "final read on n1, n2"
    start: float
    end: float
    version: int | None  # None: not found
    sha: str | None
    final: bool

    def what(self) -> str:
        return "not found" if self.version is None else f"v{self.version}"

    def show(self) -> str:
        return f"{self.who} [t={_t(self.start)}..{_t(self.end)}] returned {self.what()}"


def _get_read(op: Op) -> _Read | None:
    answer = read_answer(op.got)
    if answer is None:
        return None
    return _Read(f"get by {op.process}", op.start, op.end, answer[0], answer[1], False)


def _final_reads(records: Sequence[Record]) -> list[_Read]:
    """One _Read per distinct answer among a name's final reads (those that failed, with an
    "error" instead of an answer, tell nothing and are left out)."""
    groups: dict[tuple[int | None, str | None], list[Record]] = defaultdict(list)
    for r in records:
        answer = read_answer(r.value)
        if answer is not None:
            groups[answer].append(r)
    out = []
    for (version, sha), same in sorted(groups.items(), key=lambda kv: kv[1][0].t):
        nodes = ", ".join(str(r.value.get("node")) for r in same)
        times = [r.t for r in same]
        out.append(_Read(f"final read on {nodes}", min(times), max(times), version, sha, True))
    return out


def read_answer(value: Mapping[str, Any]) -> tuple[int | None, str | None] | None:
    """(version, sha256) a read returned, (None, None) for not found, None if it holds no
    answer (a final read that failed records {"node", "error"})."""
    if value.get("missing"):
        return None, None
    if value.get("version") is None:
        return None
    return int(value["version"]), str(value.get("sha256"))


class _Newest(Generic[T]):
    """The entry with the largest number among those whose time is < t, in O(log n)."""

    def __init__(self, entries: Iterable[tuple[float, int, T]]) -> None:
        ordered = sorted(entries, key=lambda e: e[0])
        self._times = [time for time, _, _ in ordered]
        self._best: list[tuple[int, T]] = []
        for _, number, item in ordered:
            if not self._best or number > self._best[-1][0]:
                self._best.append((number, item))
            else:
                self._best.append(self._best[-1])

    def before(self, t: float) -> tuple[int, T] | None:
        i = bisect_left(self._times, t)
        return self._best[i - 1] if i else None


# --- the store ----------------------------------------------------------------------------------


def _store_anomalies(history: Sequence[Record], ops: Sequence[Op]) -> list[Anomaly]:
    by_name: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_name[op.name].append(op)
    finals: dict[str, list[Record]] = defaultdict(list)
    for r in history:
        if r.process == FINAL and r.type == OK and r.f == READ and r.name is not None:
            finals[r.name].append(r)
    out: list[Anomaly] = []
    for name in sorted(by_name.keys() | finals.keys()):
        out += _NameCheck(name, by_name[name], finals[name]).anomalies()
    return out


class _NameCheck:
    """The store checks of one name."""

    def __init__(self, name: str, ops: Sequence[Op], finals: Sequence[Record]) -> None:
        self.name = name
        self.puts = [op for op in ops if op.f == PUT]
        self.acked_puts = [op for op in self.puts if op.acked]
        self.unknown_sent: dict[str | None, float] = {}  # bytes -> first unknown put of them
        for p in sorted(self.puts, key=lambda o: -o.start):
            if p.unknown:
                self.unknown_sent[p.sha] = p.start
        deletes = [op for op in ops if op.f == DELETE]
        self.acked_deletes = [op for op in deletes if op.acked]
        self.unknown_deletes = sorted((op for op in deletes if op.unknown), key=lambda o: o.start)
        self.gets = [r for op in ops if op.f == GET and op.acked if (r := _get_read(op))]
        self.finals = _final_reads(finals)
        self.puts_acked_by = _Newest((p.end, p.version, p) for p in self.acked_puts)
        self.deleted_by = _Newest((d.end, d.version, d) for d in self.acked_deletes)
        self.deletes_started_by = _Newest((d.start, d.version, d) for d in self.acked_deletes)
        self.seen_by = _Newest((g.end, g.version, g) for g in self.gets if g.version is not None)

    def anomalies(self) -> list[Anomaly]:
        out = self._version_order() + self._bytes()
        out += [a for r in [*self.gets, *self.finals] if (a := self._read_order(r)) is not None]
        if len(self.finals) > 1:
            answers = "; ".join(f"{r.who}: {r.what()} {_short(r.sha)}" for r in self.finals)
            out.append(self._anomaly(FINAL_DISAGREEMENT, f"final reads disagree: {answers}"))
        return out

    def _anomaly(self, kind: str, detail: str) -> Anomaly:
        return Anomaly(kind, f"{self.name}: {detail}")

    # --- the order of versions ------------------------------------------------------------

    def _version_order(self) -> list[Anomaly]:
        writes = [*self.acked_puts, *self.acked_deletes]
        out = []
        numbered: dict[int, list[Op]] = defaultdict(list)
        for w in writes:
            numbered[w.version].append(w)
        for version, same in sorted(numbered.items()):
            if len(same) > 1:
                who = " and ".join(w.show() for w in same)
                out.append(self._anomaly(VERSION_ORDER, f"v{version} was given twice: {who}"))
        acked_by = _Newest((w.end, w.version, w) for w in writes)
        for w in writes:
            earlier = acked_by.before(w.start)
            if earlier is not None and w.version < earlier[0]:
                detail = f"{w.show()} got a smaller number than {earlier[1].show()} before it"
                out.append(self._anomaly(VERSION_ORDER, detail))
        return out

    # --- bytes ----------------------------------------------------------------------------

    def _bytes(self) -> list[Anomaly]:
        out = [
            self._anomaly(
                WRONG_BYTES,
                f"{p.show()} sent {_short(p.sha)} but was acknowledged "
                f"with {_short(str(p.got.get('sha256')))}",
            )
            for p in self.acked_puts
            if p.got.get("sha256") is not None and p.got.get("sha256") != p.sha
        ]
        acked: dict[int, list[Op]] = defaultdict(list)
        for p in self.acked_puts:
            acked[p.version].append(p)
        unacked_reads: dict[int, list[_Read]] = defaultdict(list)
        for r in [*self.gets, *self.finals]:
            if r.version is None:
                continue
            if r.version not in acked:
                unacked_reads[r.version].append(r)
            if (a := self._bytes_of(r, acked.get(r.version, []))) is not None:
                out.append(a)
        for version, reads in sorted(unacked_reads.items()):
            if len({r.sha for r in reads}) > 1:
                answers = "; ".join(f"{r.who} at t={_t(r.end)}: {_short(r.sha)}" for r in reads)
                out.append(self._anomaly(WRONG_BYTES, f"reads of v{version} differ: {answers}"))
        return out

    def _bytes_of(self, r: _Read, puts: Sequence[Op]) -> Anomaly | None:
        """Whether the bytes read as r.version could be that version's."""
        if puts:
            if any(p.sha == r.sha and p.start < r.end for p in puts):
                return None
            wrote = ", ".join(f"{_short(p.sha)} ({p.show()})" for p in puts)
            return self._anomaly(WRONG_BYTES, f"{r.show()} with {_short(r.sha)}, not {wrote}")
        if self.unknown_sent.get(r.sha, math.inf) < r.end:  # a put of unknown outcome
            return None
        old = self._deleted_source(r)
        if old is not None:
            put, delete = old
            detail = f"{r.show()} with the bytes of {put.show()}, deleted by {delete.show()}"
            return self._anomaly(RESURRECTION, detail)
        return self._anomaly(
            WRONG_BYTES, f"{r.show()} with {_short(r.sha)}, which no put of it could have written"
        )

    def _deleted_source(self, r: _Read) -> tuple[Op, Op] | None:
        """An acknowledged put with r's bytes and an acknowledged delete invoked after it was
        acknowledged and acknowledged before r started (so those bytes should be gone)."""
        for put in self.acked_puts:
            if put.sha != r.sha:
                continue
            for d in self.acked_deletes:
                if put.end < d.start and d.end < r.start:
                    return put, d
        return None

    # --- the order of reads ---------------------------------------------------------------

    def _read_order(self, r: _Read) -> Anomaly | None:
        """The first order anomaly read r shows: resurrection, then a lost or stale
        acknowledged put, then a version going back from an earlier read's."""
        deleted = self.deleted_by.before(r.start)
        if deleted is not None and r.version is not None and r.version <= deleted[0]:
            detail = f"{r.show()}, but {deleted[1].show()} hid every version up to it"
            return self._anomaly(RESURRECTION, detail)
        acked = self.puts_acked_by.before(r.start)
        if acked is not None and self._impossible_after(r, acked[0]):
            if r.final:
                return self._anomaly(LOST_WRITE, f"{acked[1].show()} is lost: {r.show()}")
            return self._anomaly(STALE_READ, f"{r.show()} after {acked[1].show()}")
        seen = self.seen_by.before(r.start)
        if seen is not None and self._impossible_after(r, seen[0]):
            return self._anomaly(WENT_BACK, f"{r.show()} after {seen[1].show()}")
        return None

    def _impossible_after(self, r: _Read, version: int) -> bool:
        """Whether r's answer is impossible once `version` was visible before r started: the
        newest version only grows, so a smaller one never comes back, and not found needs a
        delete that may have hidden `version` before r ended."""
        if r.version is not None:
            return r.version < version
        return self._hider(version, r.end) is None

    def _hider(self, version: int, until: float) -> Op | None:
        """A delete that may have hidden `version` before `until`: an unknown one invoked
        before (its number is unknown, so it may be above), or an acknowledged one invoked
        before whose number is >= version."""
        if self.unknown_deletes and self.unknown_deletes[0].start < until:
            return self.unknown_deletes[0]
        best = self.deletes_started_by.before(until)
        return best[1] if best is not None and best[0] >= version else None


def _short(sha: str | None) -> str:
    return "no bytes" if sha is None else f"sha256 {sha[:12]}"


# --- jobs ---------------------------------------------------------------------------------------


def _job_anomalies(history: Sequence[Record]) -> tuple[list[Anomaly], int, int]:
    """Anomalies of every acknowledged job, the queries checked and the results compared with a
    reference."""
    jobs = [r for r in history if r.process == JOBS and r.f == SUBMIT and r.type == OK]
    results: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    references: dict[tuple[str, str], Reference] = {}  # (model, dataset) -> its reference
    for r in _finals(history, RESULTS):
        results[str(r.value["job"])] += r.value.get("results") or []
    for r in _finals(history, REFERENCE):
        dataset = str(r.value.get("dataset", DIGITS))  # references are of the digits by default
        references[str(r.value["model"]), dataset] = _reference(r.value)
    out: list[Anomaly] = []
    queries = compared = 0
    for submitted in jobs:
        job, model = str(submitted.value["job"]), str(submitted.value.get("model"))
        total = int(submitted.value["queries"])
        got = results.get(job, [])
        label = f"job {job} ({model} on {submitted.value.get('dataset')}, submitted t="
        label += f"{_t(submitted.t)})"
        out += _exactly_once(label, got, total)
        queries += total
        reference = references.get((model, str(submitted.value.get("dataset"))))
        if reference is not None:
            comparable = [r for r in got if 0 <= int(r["index"]) < len(reference.label)]
            compared += len(comparable)
            for line in reference_mismatches(comparable, reference):
                out.append(Anomaly(WRONG_RESULT, f"{label}: {line}"))
    return out, queries, compared


def _exactly_once(label: str, results: Sequence[Mapping[str, Any]], total: int) -> list[Anomaly]:
    """exactly_once_problem's findings, one anomaly per kind of problem it lists. Its message
    joins the problems with "; ": no result -> missing, several -> duplicated, the rest (wrong
    ids, indices outside, error results) -> wrong_result (the tests pin these phrases)."""
    problem = exactly_once_problem(results, total)
    if problem is None:
        return []
    out = []
    for part in problem.split("; "):
        if "have no result" in part:
            kind = QUERY_MISSING
        elif "have several results" in part:
            kind = QUERY_DUPLICATED
        else:
            kind = WRONG_RESULT
        out.append(Anomaly(kind, f"{label}: {part}"))
    return out


def _reference(value: Mapping[str, Any]) -> Reference:
    return Reference(
        str(value["model"]),
        tuple(tuple(int(c) for c in row) for row in value["class_ids"]),
        tuple(tuple(float(s) for s in row) for row in value["scores"]),
        tuple(int(v) for v in value["label"]),
    )


def _finals(history: Sequence[Record], f: str) -> list[Record]:
    return [r for r in history if r.process == FINAL and r.type == OK and r.f == f]


# --- the control plane and membership ---------------------------------------------------------


def _election_anomalies(history: Sequence[Record]) -> list[Anomaly]:
    """Every epoch some node logged as won by more than one coordinator."""
    won: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in _finals(history, ELECTIONS):
        for event in r.value.get("events") or []:
            if event.get("epoch") is None or event.get("coordinator") is None:
                continue  # a log line without them cannot contradict anything
            seen = f"{r.value.get('node')} at t={event.get('t')}"
            won[int(event["epoch"])][str(event["coordinator"])].append(seen)
    out = []
    for epoch, coordinators in sorted(won.items()):
        if len(coordinators) > 1:
            who = "; ".join(f"{c} (logged by {', '.join(s)})" for c, s in coordinators.items())
            out.append(Anomaly(TWO_COORDINATORS, f"epoch {epoch} elected {who}"))
    return out


def _membership_anomalies(history: Sequence[Record]) -> list[Anomaly]:
    truths = _finals(history, TRUTH)
    if not truths:
        return []
    alive = sorted(str(n) for n in truths[-1].value.get("alive") or [])
    dead = sorted(str(n) for n in truths[-1].value.get("dead") or [])
    out = []
    for r in _finals(history, MEMBERS):
        node, view = str(r.value.get("node")), r.value.get("view") or {}
        if node not in alive:
            continue
        wrong = [f"{m} is {view.get(m, 'absent')} (alive)" for m in alive if view.get(m) != "alive"]
        wrong += [f"{m} is alive (dead)" for m in dead if view.get(m) == "alive"]
        if wrong:
            detail = f"{node}'s view at t={_t(r.t)}: {', '.join(wrong)}"
            out.append(Anomaly(MEMBERSHIP_DIVERGED, detail))
    return out


# --- stats --------------------------------------------------------------------------------------


def _stats(history: Sequence[Record], ops: Sequence[Op]) -> dict[str, Any]:
    by_f: dict[str, Counter[str]] = defaultdict(Counter)
    for op in ops:
        by_f[op.f][op.type] += 1
    nemesis = Counter(r.f for r in history if r.process == NEMESIS and r.f != SCHEDULE)
    faults: dict[str, int] = {}
    for r in history:
        if r.process == NEMESIS and r.f == SCHEDULE:
            faults = Schedule.from_json(r.value).counts()
    return {
        "ops": {f: dict(types) for f, types in sorted(by_f.items())},
        "names": len({op.name for op in ops}),
        "faults": faults,
        "nemesis_actions": dict(nemesis),
        "final_reads": len(_finals(history, READ)),
        "final_read_errors": sum(1 for r in _finals(history, READ) if read_answer(r.value) is None),
        "jobs": sum(1 for r in history if r.process == JOBS and r.f == SUBMIT and r.type == OK),
        "indeterminate": sum(1 for op in ops if op.unknown),
        "failed": sum(1 for op in ops if op.type == FAIL),
    }
