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
from http.client import HTTPResponse
from pathlib import Path
from typing import Any, BinaryIO
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


class Client:
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
            raise ClientError(self._http_error(exc), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(self._unreachable(reason)) from None
        return resp

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        try:
            with self._open(method, path, body) as resp:
                return json.loads(resp.read() or b"null")
        except (TimeoutError, OSError) as exc:
            if isinstance(exc, ClientError):
                raise
            raise ClientError(self._unreachable(exc)) from None

    def _http_error(self, exc: urllib.error.HTTPError) -> str:
        try:
            detail = json.loads(exc.read()).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
        if exc.code == 401:
            return f"node at {self.at} refused our credentials: {detail or 'unauthorized'}"
        return f"node at {self.at} answered {exc.code}: {detail or exc.reason}"

    def _unreachable(self, reason: object) -> str:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, socket.timeout | TimeoutError):
            why = f"no answer within {self.timeout:g} s"
        else:
            why = str(reason)
        return (
            f"cannot reach a node at {self.at} ({why}): is it running? "
            "Start a local cluster with `idunno up` or pass --at HOST:PORT"
        )

    @property
    def key(self) -> bytes:
        return self._key

    @classmethod
    def local(cls, directory: str | None = None, timeout: float = 5.0) -> Client:
        """A client for the local cluster `idunno up` started (DIR/cluster.json, its key)."""
        from idunno.localcluster import (
            DEFAULT_DIR,
            KEY_FILE,
            ClusterError,
            cluster_nodes,
            is_running,
        )
        from idunno.transport import keys

        base = Path(directory) if directory else DEFAULT_DIR
        try:
            nodes = [n for n in cluster_nodes(base) if is_running(n)]
        except ClusterError as exc:
            raise ClientError(str(exc)) from None
        if not nodes:
            raise ClientError(f"no node of the local cluster in {base} runs: `idunno up`")
        return cls(nodes[0].address, keys.load(None, base / KEY_FILE), timeout=timeout)

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

    def grep_logs(
        self, pattern: str, regex: bool = False, ignore_case: bool = False, limit: int = 1000
    ) -> dict[str, Any]:
        """This node's log lines matching `pattern`: {node, count, lines, truncated}."""
        query = urllib.parse.urlencode(
            {
                "pattern": pattern,
                "regex": "1" if regex else "0",
                "ignore_case": "1" if ignore_case else "0",
                "limit": str(limit),
            }
        )
        out: dict[str, Any] = self._request("GET", f"/v1/logs/grep?{query}")
        return out

    def members(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", "/v1/members")
        return out

    def self_info(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", "/v1/self")
        return out

    def leave(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("POST", "/v1/leave", b"")
        return out

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
            meta = {
                "name": name,
                "version": int(resp.headers["X-Idunno-Version"]),
                "sha256": resp.headers["X-Idunno-Sha256"],
                "size": int(resp.headers["Content-Length"]),
                "created_at": float(resp.headers.get("X-Idunno-Created", "0")),
            }
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

    def delete(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self._request("DELETE", _files_path(name))
        return out

    def ls(self, name: str | None = None) -> dict[str, Any]:
        query = "?" + urlencode({"name": name}) if name is not None else ""
        out: dict[str, Any] = self._request("GET", "/v1/ls" + query)
        return out

    def store(self) -> dict[str, Any]:
        out: dict[str, Any] = self._request("GET", "/v1/store")
        return out

    def versions(self, name: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._request(
            "GET", "/v1/versions?" + urlencode({"name": name})
        )["versions"]
        return out

    # --- jobs (the control plane's public API: docs/control-plane.md, "Public job API") -------

    def _call(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """A JSON request; a 503 (no coordinator reachable yet: a failover is under way) is
        retried for up to FAILOVER_WAIT s, backing off 0.1 -> 0.5 s, before it is raised."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        deadline = time.monotonic() + FAILOVER_WAIT
        delay = 0.1
        while True:
            try:
                return self._call_once(method, path, data, headers, timeout)
            except ClientError as exc:
                if exc.status != 503:
                    raise
                if time.monotonic() + delay > deadline:
                    raise ClientError(
                        f"{exc} (still after {FAILOVER_WAIT:g} s of retries: no coordinator "
                        "is reachable; check `idunno members` and retry shortly)",
                        503,
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _call_once(
        self,
        method: str,
        path: str,
        data: bytes | None,
        headers: dict[str, str],
        timeout: float | None,
    ) -> dict[str, Any]:
        try:
            with self._open(method, path, data, headers, timeout) as resp:
                out = json.loads(resp.read() or b"null")
        except ClientError:
            raise
        except (TimeoutError, OSError) as exc:
            raise ClientError(self._unreachable(exc)) from None
        except ValueError:
            raise ClientError(f"node at {self.at} answered {method} {path} with bad JSON") from None
        if not isinstance(out, dict):
            raise ClientError(f"node at {self.at} answered {method} {path} with non-object JSON")
        return out

    def submit_job(
        self,
        model: str,
        dataset: str,
        batch_size: int,
        name: str | None = None,
        weight: float | None = None,
    ) -> dict[str, Any]:
        """Submit a job; returns the job object (201 `{job}`)."""
        body: dict[str, Any] = {"model": model, "dataset": dataset, "batch_size": batch_size}
        if name is not None:
            body["name"] = name
        if weight is not None:
            body["weight"] = weight
        return _job_object(self._call("POST", "/v1/jobs", body))

    def jobs(self) -> dict[str, Any]:
        """`{jobs: [job], coordinator, epoch}`."""
        return self._call("GET", "/v1/jobs")

    def job(self, job: str) -> dict[str, Any]:
        """The job object of JOB (its id or its name)."""
        return _job_object(self._call("GET", _job_path(job)))

    def cancel_job(self, job: str) -> dict[str, Any]:
        """Cancel JOB; returns its job object."""
        return _job_object(self._call("POST", _job_path(job, "cancel"), {}))

    def rates(self, job: str | None = None) -> dict[str, Any]:
        """C1: `{window_s, jobs: [{id, name, rate, done, total, status}]}`."""
        query = "?" + urlencode({"job": job}) if job is not None else ""
        return self._call("GET", "/v1/rates" + query)

    def job_stats(self, job: str) -> dict[str, Any]:
        """C2: per-query processing time statistics (ms) of JOB."""
        return self._call("GET", _job_path(job, "stats"))

    def set_batch_size(self, job: str, n: int) -> dict[str, Any]:
        """C3: `{job, previous}`; the new size applies from the next batch dispatched."""
        return self._call("POST", _job_path(job, "batch-size"), {"batch_size": int(n)})

    def job_results(
        self,
        job: str,
        query: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        """C4: `{id, name, total, answered, results: [...]}` in dataset order."""
        params: dict[str, str] = {}
        if query is not None:
            params["query"] = query
        if limit is not None:
            params["limit"] = str(limit)
        if offset is not None:
            params["offset"] = str(offset)
        suffix = "?" + urlencode(params) if params else ""
        return self._call("GET", _job_path(job, "results") + suffix)

    def assignment(self) -> dict[str, Any]:
        """C5: `{epoch, coordinator, standby, workers: {node: [job ids]}, jobs: [...]}`."""
        return self._call("GET", "/v1/assignment")

    def train(self, models: list[str]) -> dict[str, Any]:
        """Load MODELS (none: every model) on every worker and measure cost per query."""
        return self._call("POST", "/v1/train", {"models": list(models)}, TRAIN_TIMEOUT)

    def control(self) -> dict[str, Any]:
        """`{epoch, coordinator, standby, role}` as this node sees it."""
        return self._call("GET", "/v1/control")


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
