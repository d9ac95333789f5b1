"""Helpers for real-process tests of jobs: the digits catalog, settled reigns, exactly-once
checks and an independent single-process ONNX Runtime reference for the digits models.

Pure functions take plain data; the others take a synchronous `Client` (or a name -> Client
map) and never sleep: callers wait with `procs.wait_for` and their own deadlines.

    add_digits_catalog(client)                        # digits_mlp, digits_logreg, digits
    job = client.submit_job("digits_mlp", DIGITS, 4)
    wait_for(lambda: job_done(client, job["id"]), 60, "the job to finish")
    results = all_results(client, job["id"])
    assert exactly_once_problem(results, DIGITS_TOTAL) is None
    reference = digits_reference(client, "digits_mlp")
    assert reference_mismatches(results, reference) == []
"""

from __future__ import annotations

import functools
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idunno.client import Client, ClientError
from idunno.inference import catalog
from idunno.node.logs import read_events

DIGITS = "digits"
DIGITS_TOTAL = 1797
DIGITS_X4 = "digits_x4"  # the digits four times over (7,188 items): jobs that run longer
DIGITS_MODELS = ("digits_mlp", "digits_logreg")
TOP_K = 5
RESULTS_LIMIT = 100_000
SCORE_TOLERANCE = 1e-5  # float32 probabilities differ by ~1e-7 between batch compositions


# --- the catalog ------------------------------------------------------------------------------


@functools.cache
def _builtin_model(name: str) -> tuple[bytes, catalog.ModelRecord]:
    """A zoo model's bytes and record, built once per process (training takes about a second)."""
    return catalog.builtin_model(name)


def add_builtin_model(client: Client, name: str) -> int:
    """Add the built-in model NAME through `client`; returns the stored .onnx version."""
    data, record = _builtin_model(name)
    with tempfile.TemporaryDirectory(prefix="idunno-test-") as tmp:
        local = Path(tmp) / f"{name}.onnx"
        local.write_bytes(data)
        added = catalog.Catalog(client).add_model(record, local)
    return int(added.record.version)


def add_digits_dataset(client: Client, name: str = DIGITS, times: int = 1) -> int:
    """Store scikit-learn's 1,797 digits as dataset NAME, as `idunno dataset add digits
    --builtin` does; with `times` > 1 the digits repeat (item i is digit i % 1797) for longer
    jobs. Ids are "0", "1", ... Returns the number of items."""
    from idunno.inference.digits import digit_items

    digits = [data for _, data in digit_items()]
    items = ((str(i), digits[i % len(digits)]) for i in range(len(digits) * times))
    origin = "scikit-learn load_digits (test)" + (f", {times} times" if times > 1 else "")
    catalog.Catalog(client).add_dataset(name, "digits", items, origin, (64,))
    return len(digits) * times


def add_digits_catalog(client: Client, models: Sequence[str] = DIGITS_MODELS) -> None:
    for name in models:
        add_builtin_model(client, name)
    add_digits_dataset(client)


# --- the reign ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReignView:
    epoch: int
    coordinator: str
    standby: str | None


def settled_reign(clients: Mapping[str, Client]) -> ReignView | None:
    """The reign if every node answers /v1/control with the same epoch, coordinator and standby,
    both of them among `clients` and the coordinator reporting role "coordinator"; else None."""
    views: dict[str, dict[str, Any]] = {}
    for name, c in clients.items():
        try:
            views[name] = c.control()
        except ClientError:
            return None
    keys = {(v.get("epoch"), v.get("coordinator"), v.get("standby")) for v in views.values()}
    if len(keys) != 1:
        return None
    epoch, coordinator, standby = keys.pop()
    if not coordinator or coordinator not in clients or not epoch:
        return None
    if standby is not None and standby not in clients:
        return None
    if views[coordinator].get("role") != "coordinator":
        return None
    return ReignView(int(epoch), str(coordinator), str(standby) if standby else None)


def coordinators_seen(clients: Mapping[str, Client]) -> dict[str, set[str]] | None:
    """observer -> the alive members its `members` view gives role "coordinator" (None if some
    observer does not answer)."""
    out: dict[str, set[str]] = {}
    for name, c in clients.items():
        try:
            rows = c.members()["members"]
        except ClientError:
            return None
        out[name] = {
            str(r["id"])
            for r in rows
            if r.get("role") == "coordinator" and r.get("status") == "alive"
        }
    return out


# --- jobs ---------------------------------------------------------------------------------------


def job_or_none(client: Client, job: str) -> dict[str, Any] | None:
    """The job object, or None while the node cannot answer (a failover, a stopped node)."""
    try:
        return client.job(job)
    except ClientError:
        return None


def job_done(client: Client, job: str) -> dict[str, Any] | None:
    """The job object once its status is "done" (None before, or while unreachable)."""
    obj = job_or_none(client, job)
    return obj if obj is not None and obj.get("status") == "done" else None


def job_progress(client: Client, job: str, at_least: int) -> dict[str, Any] | None:
    """The job object once it is running with at least `at_least` queries answered."""
    obj = job_or_none(client, job)
    if obj is None or obj.get("status") != "running" or int(obj.get("done", 0)) < at_least:
        return None
    return obj


def all_results(client: Client, job: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = client.job_results(job, limit=RESULTS_LIMIT)["results"]
    return out


def exactly_once_problem(
    results: Sequence[Mapping[str, Any]],
    total: int,
    item_ids: Sequence[str] | None = None,
    allow_errors: bool = False,
) -> str | None:
    """None if `results` hold exactly one result per query index 0..total-1 (with the query id
    `item_ids[index]`, default str(index); no error results unless `allow_errors`), else a
    one-line description of what is wrong."""
    counts = Counter(int(r["index"]) for r in results)
    missing = [q for q in range(total) if q not in counts]
    twice = sorted(q for q, n in counts.items() if n > 1)
    outside = sorted(q for q in counts if not 0 <= q < total)
    problems = []
    if missing:
        problems.append(f"{len(missing)} queries have no result (first: {missing[:10]})")
    if twice:
        problems.append(f"{len(twice)} queries have several results (first: {twice[:10]})")
    if outside:
        problems.append(f"results for indices outside 0..{total - 1}: {outside[:10]}")
    ids = item_ids if item_ids is not None else [str(i) for i in range(total)]
    wrong_id = [
        (int(r["index"]), r.get("query"))
        for r in results
        if 0 <= int(r["index"]) < total and r.get("query") != ids[int(r["index"])]
    ]
    if wrong_id:
        problems.append(f"{len(wrong_id)} results name the wrong query id: {wrong_id[:5]}")
    errors = [int(r["index"]) for r in results if r.get("error") is not None]
    if errors and not allow_errors:
        problems.append(f"{len(errors)} results are errors (first: {errors[:10]})")
    return "; ".join(problems) or None


# --- the reference ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """Top-k classes and scores per item of a single-process ONNX Runtime run."""

    model: str
    class_ids: tuple[tuple[int, ...], ...]
    scores: tuple[tuple[float, ...], ...]
    label: tuple[int, ...]  # the model's own "label" output (its top-1)


def reference_topk(
    model: str, model_bytes: bytes, items: Sequence[bytes], k: int = TOP_K
) -> Reference:
    """Run the digits model on every item in one ONNX Runtime session (one thread): top-k of the
    "probabilities" output (ties: lower class first) and the "label" output."""
    import numpy as np
    import onnxruntime as ort

    from idunno.inference.digits import preprocess_digits

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    x = preprocess_digits(list(items))
    input_name = session.get_inputs()[0].name
    label, probabilities = session.run(["label", "probabilities"], {input_name: x})
    probs = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(probs, order, axis=1)
    return Reference(
        model,
        tuple(tuple(int(c) for c in row) for row in order.tolist()),
        tuple(tuple(float(s) for s in row) for row in best.tolist()),
        tuple(int(v) for v in np.asarray(label).tolist()),
    )


def digits_reference(client: Client, model: str, dataset: str = DIGITS) -> Reference:
    """The reference for MODEL on a digits DATASET, from the bytes the store holds (the
    model's current version and the manifest's pinned shards)."""
    cat = catalog.Catalog(client)
    record = cat.model(model)
    model_bytes = cat.get_bytes(catalog.model_file(model), record.version)
    manifest = cat.dataset(dataset)
    items = [data for _, data in cat.items(manifest)]
    return reference_topk(model, model_bytes, items)


def reference_mismatches(
    results: Iterable[Mapping[str, Any]],
    reference: Reference,
    tolerance: float = SCORE_TOLERANCE,
) -> list[str]:
    """Every way `results` differ from `reference` (top-1, top-k classes, scores), one line per
    query, at most 10 lines plus a count."""
    out: list[str] = []
    for r in results:
        q = int(r["index"])
        want = reference.class_ids[q]
        got = tuple(int(c) for c in r.get("class_ids") or ())
        scores = tuple(float(s) for s in r.get("scores") or ())
        if not got or got[0] != reference.label[q]:
            out.append(f"query {q}: top-1 {got[:1]} but the model's label is {reference.label[q]}")
        elif got != want:
            out.append(f"query {q}: top-{len(want)} {got} but the reference gives {want}")
        elif len(scores) != len(want) or any(
            abs(a - b) > tolerance for a, b in zip(scores, reference.scores[q], strict=True)
        ):
            out.append(f"query {q}: scores {scores} but the reference gives {reference.scores[q]}")
    if len(out) > 10:
        return [*out[:10], f"... and {len(out) - 10} more"]
    return out


# --- logs ---------------------------------------------------------------------------------------


def events(data_dir: str | Path, *names: str, since: float = 0.0) -> list[dict[str, Any]]:
    """A node's JSON log records of the given event names (all events if none)."""
    records = read_events(Path(data_dir), since=since)
    return [r for r in records if not names or r.get("event") in names]
