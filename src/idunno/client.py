"""Synchronous HTTP client for a node's /v1 API (the CLI is built on it).

Every failure surfaces as ClientError with a one-line message naming the cause and the fix.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar
from urllib.parse import quote, urlencode

from idunno.transport import tokens

TRANSFER_TIMEOUT = 300.0
RETRIES = 3


def _retry(fn: Callable[[], dict[str, Any]], retries: int) -> dict[str, Any]:
    """Call fn, retrying 503s (a node failed mid-operation) after 0.5, 1, 2 ... s."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except ClientError as exc:
            if exc.status != 503 or attempt == retries:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


class ClientError(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _files_path(name: str) -> str:
    return "/v1/files/" + quote(name, safe="/")


def http_error_message(at: str, status: int, detail: str, reason: str) -> str:
    """One line for an HTTP error answer (shared by the sync and async clients)."""
    if status == 401:
        return f"node at {at} refused our credentials: {detail or 'unauthorized'}"
    return f"node at {at} answered {status}: {detail or reason}"


def unreachable_message(at: str, reason: object, timeout: float) -> str:
    """One line for a node we could not talk to, with what to do about it."""
    if isinstance(reason, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(reason, socket.timeout | TimeoutError):
        why = f"no answer within {timeout:g} s"
    else:
        why = str(reason) or type(reason).__name__
    return (
        f"cannot reach a node at {at} ({why}): is it running? "
        "Start a local cluster with `idunno up` or pass --at HOST:PORT"
    )


def local_target(directory: str | None = None) -> tuple[str, bytes]:
    """(address, key) of a running node of the local cluster `idunno up` started."""
    from idunno.localcluster import DEFAULT_DIR, KEY_FILE, ClusterError, cluster_nodes, is_running
    from idunno.transport import keys

    base = Path(directory) if directory else DEFAULT_DIR
    try:
        nodes = [n for n in cluster_nodes(base) if is_running(n)]
    except ClusterError as exc:
        raise ClientError(str(exc)) from None
    if not nodes:
        raise ClientError(f"no node of the local cluster in {base} runs: `idunno up`")
    return nodes[0].address, keys.load(None, base / KEY_FILE)


Json = dict[str, Any]
R = TypeVar("R")


def _same(out: Json) -> Json:
    return out


@dataclass(frozen=True)
class Req:
    """One JSON call of the API, independent of how it is sent."""

    method: str
    path: str
    body: Any = None  # JSON-encoded when not None
    timeout: float | None = None
    # Job calls go to the coordinator: a 503 means a failover is under way, retried for a while.
    failover: bool = False
    post: Callable[[Json], Json] = _same  # picks the answer's useful part


class _Api(Generic[R]):
    """Every JSON call of the API, once: `Client` sends them blocking, `AsyncClient` as
    coroutines (R is the answer, or an awaitable of it)."""

    def _send(self, req: Req) -> R:
        raise NotImplementedError

    def members(self) -> R:
        return self._send(Req("GET", "/v1/members"))

    def self_info(self) -> R:
        return self._send(Req("GET", "/v1/self"))

    def leave(self) -> R:
        return self._send(Req("POST", "/v1/leave", {}))

    def grep_logs(
        self, pattern: str, regex: bool = False, ignore_case: bool = False, limit: int = 1000
    ) -> R:
        """This node's log lines matching `pattern`: {node, count, lines, truncated}."""
        query = urlencode(
            {
                "pattern": pattern,
                "regex": "1" if regex else "0",
                "ignore_case": "1" if ignore_case else "0",
                "limit": str(limit),
            }
        )
        return self._send(Req("GET", f"/v1/logs/grep?{query}"))

    # --- store --------------------------------------------------------------------------

    def delete(self, name: str) -> R:
        return self._send(Req("DELETE", _files_path(name)))

    def ls(self, name: str | None = None) -> R:
        query = "?" + urlencode({"name": name}) if name is not None else ""
        return self._send(Req("GET", "/v1/ls" + query))

    def store(self) -> R:
        return self._send(Req("GET", "/v1/store"))

    # --- jobs (the control plane's public API: docs/control-plane.md, "Public job API") -------

    def _job(self, method: str, path: str, body: Any = None, **kw: Any) -> R:
        return self._send(Req(method, path, body, failover=True, **kw))

    def submit_job(
        self,
        model: str,
        dataset: str,
        batch_size: int,
        name: str | None = None,
        weight: float | None = None,
    ) -> R:
        """Submit a job; returns the job object (201 `{job}`)."""
        body: dict[str, Any] = {"model": model, "dataset": dataset, "batch_size": batch_size}
        if name is not None:
            body["name"] = name
        if weight is not None:
            body["weight"] = weight
        return self._job("POST", "/v1/jobs", body, post=_job_object)

    def jobs(self) -> R:
        """`{jobs: [job], coordinator, epoch}`."""
        return self._job("GET", "/v1/jobs")

    def job(self, job: str) -> R:
        """The job object of JOB (its id or its name)."""
        return self._job("GET", _job_path(job), post=_job_object)

    def cancel_job(self, job: str) -> R:
        """Cancel JOB; returns its job object."""
        return self._job("POST", _job_path(job, "cancel"), {}, post=_job_object)

    def rates(self, job: str | None = None) -> R:
        """C1: `{window_s, jobs: [{id, name, rate, done, total, status}]}`."""
        query = "?" + urlencode({"job": job}) if job is not None else ""
        return self._job("GET", "/v1/rates" + query)

    def job_stats(self, job: str) -> R:
        """C2: per-query processing time statistics (ms) of JOB."""
        return self._job("GET", _job_path(job, "stats"))

    def set_batch_size(self, job: str, n: int) -> R:
        """C3: `{job, previous}`; the new size applies from the next batch dispatched."""
        return self._job("POST", _job_path(job, "batch-size"), {"batch_size": int(n)})

    def job_results(
        self,
        job: str,
        query: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> R:
        """C4: `{id, name, total, answered, results: [...]}` in dataset order."""
        params: dict[str, str] = {}
        if query is not None:
            params["query"] = query
        if limit is not None:
            params["limit"] = str(limit)
        if offset is not None:
            params["offset"] = str(offset)
        suffix = "?" + urlencode(params) if params else ""
        return self._job("GET", _job_path(job, "results") + suffix)

    def assignment(self) -> R:
        """C5: `{epoch, coordinator, standby, workers: {node: [job ids]}, jobs: [...]}`."""
        return self._job("GET", "/v1/assignment")

    def train(self, models: list[str]) -> R:
        """Load MODELS (none: every model) on every worker and measure cost per query."""
        return self._job("POST", "/v1/train", {"models": list(models)}, timeout=TRAIN_TIMEOUT)

    def control(self) -> R:
        """`{epoch, coordinator, standby, role}` as this node sees it."""
        return self._job("GET", "/v1/control")


class Client(_Api[Json]):
    """Blocking client; every method returns the answer's JSON object."""

    def __init__(self, at: str, key: bytes, timeout: float = 5.0) -> None:
        self.at = at
        self._key = key
        self.timeout = timeout

    def _open(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> HTTPResponse:
        req = urllib.request.Request(f"http://{self.at}{path}", data=body, method=method)
        req.add_header("Authorization", f"Bearer {tokens.mint(self._key, ttl=3600)}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            resp: HTTPResponse = urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                message = self._http_error(exc)
            finally:
                exc.close()  # its socket, at once rather than whenever the error is collected
            raise ClientError(message, exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(self._unreachable(reason)) from None
        return resp

    def _http_error(self, exc: urllib.error.HTTPError) -> str:
        try:
            detail = json.loads(exc.read()).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
        return http_error_message(self.at, exc.code, detail, str(exc.reason))

    def _unreachable(self, reason: object) -> str:
        return unreachable_message(self.at, reason, self.timeout)

    def _send(self, req: Req) -> Json:
        """One JSON call; with `failover`, a 503 (no coordinator reachable yet: a failover is
        under way) is retried for up to FAILOVER_WAIT s, backing off 0.1 -> 0.5 s."""
        data = None if req.body is None else json.dumps(req.body).encode()
        headers = {"Content-Type": "application/json"} if req.body is not None else {}
        deadline = time.monotonic() + FAILOVER_WAIT
        delay = 0.1
        while True:
            try:
                return req.post(self._send_once(req, data, headers))
            except ClientError as exc:
                if exc.status != 503 or not req.failover:
                    raise
                if time.monotonic() + delay > deadline:
                    raise failover_gave_up(exc) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _send_once(self, req: Req, data: bytes | None, headers: dict[str, str]) -> Json:
        try:
            with self._open(req.method, req.path, data, headers, req.timeout) as resp:
                return _json_object(self.at, req, resp.read())
        except ClientError:
            raise
        except (TimeoutError, OSError) as exc:
            raise ClientError(self._unreachable(exc)) from None

    @property
    def key(self) -> bytes:
        return self._key

    @classmethod
    def local(cls, directory: str | None = None, timeout: float = 5.0) -> Client:
        """A client for the local cluster `idunno up` started (DIR/cluster.json, its key)."""
        at, key = local_target(directory)
        return cls(at, key, timeout=timeout)

    def models(self) -> list[dict[str, Any]]:
        """The models in the store (their records: name, preprocess, input shape, labels...)."""
        from idunno.inference.catalog import Catalog

        records, _ = Catalog(self).models()
        return [r.to_json() for r in records]

    def datasets(self) -> list[dict[str, Any]]:
        """The datasets in the store (their manifests without the item ids)."""
        from idunno.inference.catalog import Catalog

        manifests, _ = Catalog(self).datasets()
        return [m.summary() for m in manifests]

    # --- store --------------------------------------------------------------------------

    def put(
        self,
        local: Path,
        name: str,
        progress: Callable[[int], None] | None = None,
        retries: int = RETRIES,
    ) -> dict[str, Any]:
        """Upload a local file as the next version of NAME (streamed, never held in memory).

        A node failing mid-put (503) is retried with backoff, long enough for the failure
        detector to take it out of the replica set.
        """
        return _retry(lambda: self._put_once(local, name, progress), retries)

    def _put_once(
        self, local: Path, name: str, progress: Callable[[int], None] | None
    ) -> dict[str, Any]:
        size = local.stat().st_size
        with open(local, "rb") as f:
            # An iterator of 1 MiB chunks: http.client would send a file object 8 KiB at a time.
            body = _chunks(f, progress)
            headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
            with self._open("PUT", _files_path(name), body, headers, TRANSFER_TIMEOUT) as resp:
                out: dict[str, Any] = json.loads(resp.read())
        return out

    def get(
        self,
        name: str,
        local: Path,
        version: int | None = None,
        progress: Callable[[int], None] | None = None,
        retries: int = RETRIES,
    ) -> dict[str, Any]:
        """Download NAME (newest, or `version`) to `local`, checking its sha256 end to end.

        Bytes land in a temporary file beside `local` that replaces it only when complete. A
        transfer cut short (a holder found its copy corrupt, or died) is retried; the cluster
        serves the retry from another replica.
        """
        return _retry(lambda: self._get_once(name, local, version, progress), retries)

    def _get_once(
        self,
        name: str,
        local: Path,
        version: int | None,
        progress: Callable[[int], None] | None,
    ) -> dict[str, Any]:
        query = f"?version={version}" if version is not None else ""
        tmp = local.with_name(f".{local.name}.idunno-part")
        h = hashlib.sha256()
        path = _files_path(name) + query
        redirect = {"X-Idunno-Redirect": "ok"}
        with self._open("GET", path, headers=redirect, timeout=TRANSFER_TIMEOUT) as resp:
            meta = file_meta(name, resp.headers)
            try:
                with open(tmp, "wb") as out:
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
                        h.update(chunk)
                        if progress:
                            progress(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                tmp.unlink(missing_ok=True)
                raise ClientError(f"download of {name!r} was cut short ({exc!r})", 503) from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        if h.hexdigest() != meta["sha256"]:
            tmp.unlink(missing_ok=True)
            raise ClientError(f"download of {name!r} arrived damaged (sha256 mismatch)", 503)
        os.replace(tmp, local)
        return meta

    def versions(self, name: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._send(_versions_req(name))["versions"]
        return out


def file_meta(name: str, headers: Any) -> Json:  # http.client or aiohttp headers
    """A download's metadata from the node's answer headers."""
    return {
        "name": name,
        "version": int(headers["X-Idunno-Version"]),
        "sha256": headers["X-Idunno-Sha256"],
        "size": int(headers["Content-Length"]),
        "created_at": float(headers.get("X-Idunno-Created", "0")),
    }


def _versions_req(name: str) -> Req:
    return Req("GET", "/v1/versions?" + urlencode({"name": name}))


def failover_gave_up(exc: ClientError) -> ClientError:
    return ClientError(
        f"{exc} (still after {FAILOVER_WAIT:g} s of retries: no coordinator "
        "is reachable; check `idunno members` and retry shortly)",
        503,
    )


def _json_object(at: str, req: Req, raw: bytes) -> Json:
    try:
        out = json.loads(raw or b"null")
    except ValueError:
        raise ClientError(f"node at {at} answered {req.method} {req.path} with bad JSON") from None
    if not isinstance(out, dict):
        raise ClientError(f"node at {at} answered {req.method} {req.path} with non-object JSON")
    return out


FAILOVER_WAIT = 5.0  # how long job calls retry a 503 (no coordinator reachable yet)
TRAIN_TIMEOUT = 120.0  # loading ResNet18 on every worker takes seconds


def _job_path(job: str, action: str = "") -> str:
    return "/v1/jobs/" + quote(job, safe="") + (f"/{action}" if action else "")


def _job_object(out: dict[str, Any]) -> dict[str, Any]:
    """The job object from a `{job: {...}}` answer (a bare job object is accepted too)."""
    inner = out.get("job")
    return inner if isinstance(inner, dict) else out


UPLOAD_CHUNK = 1 << 20


def _chunks(f: BinaryIO, report: Callable[[int], None] | None) -> Iterator[bytes]:
    while chunk := f.read(UPLOAD_CHUNK):
        if report:
            report(len(chunk))
        yield chunk
