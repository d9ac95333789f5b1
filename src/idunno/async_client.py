"""Asynchronous client (aiohttp) with the same calls as `idunno.Client`, for asyncio programs.

    async with AsyncClient.local() as c:
        job = await c.submit_job("resnet18", "photos", batch_size=8)
        print((await c.rates())["jobs"])

Every JSON call is the shared table in `idunno.client._Api`, so both clients stay in step;
files stream in 1 MiB chunks both ways, and downloads are checked end to end (sha256).
Model and dataset listings read the store's catalog, which is synchronous: they run in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from idunno.client import (
    FAILOVER_WAIT,
    TRANSFER_TIMEOUT,
    UPLOAD_CHUNK,
    Client,
    ClientError,
    Json,
    Req,
    _Api,
    _files_path,
    _json_object,
    _versions_req,
    failover_gave_up,
    file_meta,
    http_error_message,
    local_target,
    unreachable_message,
)
from idunno.transport import tokens


class AsyncClient(_Api[Awaitable[Json]]):
    """Every method is a coroutine returning the answer's JSON object. Use `async with`, or
    call `close()` when done (it owns one aiohttp session)."""

    def __init__(self, at: str, key: bytes, timeout: float = 5.0) -> None:
        self.at = at
        self._key = key
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def local(cls, directory: str | None = None, timeout: float = 5.0) -> AsyncClient:
        """A client for the local cluster `idunno up` started (DIR/cluster.json, its key)."""
        at, key = local_target(directory)
        return cls(at, key, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {tokens.mint(self._key, ttl=3600)}"}
        headers.update(extra or {})
        return headers

    async def _raise_for(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status < 400:
            return
        try:
            detail = str((await resp.json(content_type=None)).get("error", ""))
        except (ValueError, AttributeError, aiohttp.ClientError):
            detail = ""
        message = http_error_message(self.at, resp.status, detail, resp.reason or "")
        raise ClientError(message, resp.status)

    def _unreachable(self, exc: BaseException) -> ClientError:
        reason: object = exc
        if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error is not None:
            reason = exc.os_error
        elif isinstance(exc, TimeoutError):
            reason = TimeoutError()
        return ClientError(unreachable_message(self.at, reason, self.timeout))

    # --- JSON calls -----------------------------------------------------------------------

    async def _send(self, req: Req) -> Json:
        """One JSON call; with `failover`, a 503 is retried for up to FAILOVER_WAIT s, as the
        blocking client does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FAILOVER_WAIT
        delay = 0.1
        while True:
            try:
                return req.post(await self._send_once(req))
            except ClientError as exc:
                if exc.status != 503 or not req.failover:
                    raise
                if loop.time() + delay > deadline:
                    raise failover_gave_up(exc) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _send_once(self, req: Req) -> Json:
        data = None if req.body is None else json.dumps(req.body).encode()
        extra = {"Content-Type": "application/json"} if data is not None else {}
        return await self._exchange(req, data, extra, req.timeout or self.timeout)

    async def _exchange(self, req: Req, body: Any, headers: dict[str, str], timeout: float) -> Json:
        """Send one request and read its JSON object answer; errors as one-line ClientErrors."""
        try:
            async with self._http().request(
                req.method,
                f"http://{self.at}{req.path}",
                data=body,
                headers=self._headers(headers),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                await self._raise_for(resp)
                return _json_object(self.at, req, await resp.read())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(exc) from None

    async def versions(self, name: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = (await self._send(_versions_req(name)))["versions"]
        return out

    # --- catalog (synchronous underneath: run in a thread) ----------------------------------

    def _blocking(self) -> Client:
        return Client(self.at, self._key, timeout=self.timeout)

    async def models(self) -> list[dict[str, Any]]:
        """The models in the store (their records)."""
        return await asyncio.to_thread(self._blocking().models)

    async def datasets(self) -> list[dict[str, Any]]:
        """The datasets in the store (their manifests without the item ids)."""
        return await asyncio.to_thread(self._blocking().datasets)

    # --- files ----------------------------------------------------------------------------

    async def put(self, local: Path | str, name: str) -> Json:
        """Upload a local file as the next version of NAME, streamed from disk."""
        path = Path(local)
        size = path.stat().st_size
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        return await self._upload(name, _file_chunks(path), headers)

    async def put_bytes(self, data: bytes, name: str) -> Json:
        """Upload DATA as the next version of NAME."""
        headers = {"Content-Type": "application/octet-stream"}
        return await self._upload(name, data, headers)

    async def _upload(self, name: str, body: Any, headers: dict[str, str]) -> Json:
        return await self._exchange(Req("PUT", _files_path(name)), body, headers, TRANSFER_TIMEOUT)

    async def get(self, name: str, local: Path | str, version: int | None = None) -> Json:
        """Download NAME (newest, or VERSION) to LOCAL, checked end to end; a partial download
        never replaces LOCAL."""
        target = Path(local)
        tmp = target.with_name(f".{target.name}.idunno-part")
        try:
            meta = await self._download(name, version, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        return meta

    async def get_bytes(self, name: str, version: int | None = None) -> tuple[bytes, Json]:
        """NAME's bytes (newest, or VERSION) and its metadata, checked end to end."""
        chunks: list[bytes] = []
        meta = await self._fetch(name, version, chunks.append)
        return b"".join(chunks), meta

    async def _download(self, name: str, version: int | None, tmp: Path) -> Json:
        with open(tmp, "wb") as out:
            return await self._fetch(name, version, out.write)

    async def _fetch(self, name: str, version: int | None, sink: Any) -> Json:
        query = f"?version={version}" if version is not None else ""
        url = f"http://{self.at}{_files_path(name)}{query}"
        timeout = aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT)
        h = hashlib.sha256()
        try:
            async with self._http().get(url, headers=self._headers(), timeout=timeout) as resp:
                await self._raise_for(resp)
                meta = file_meta(name, resp.headers)
                async for chunk in resp.content.iter_chunked(UPLOAD_CHUNK):
                    h.update(chunk)
                    sink(chunk)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ClientError(f"download of {name!r} was cut short ({exc!r})", 503) from None
        if h.hexdigest() != meta["sha256"]:
            raise ClientError(f"download of {name!r} arrived damaged (sha256 mismatch)", 503)
        return meta


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(UPLOAD_CHUNK):
            yield chunk
