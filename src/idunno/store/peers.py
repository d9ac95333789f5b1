"""Node-to-node calls of the store (internal HTTP routes under /v1/internal/store/)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from idunno.store.disk import Version
from idunno.transport import tokens

# Small calls answer in milliseconds; a silent (SIGSTOPped) peer must not stall a read long.
SMALL_TIMEOUT = aiohttp.ClientTimeout(total=2)
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=30)


class PeerError(Exception):
    """A peer did not do what we asked; the message names the peer and the cause."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Peers:
    def __init__(self, session: aiohttp.ClientSession, key: bytes) -> None:
        self.session = session
        self._key = key

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {tokens.mint(self._key, ttl=300)}"}
        if extra:
            h.update(extra)
        return h

    async def call(self, addr: str, path: str, body: dict[str, Any]) -> Any:
        url = f"http://{addr}/v1/internal/store/{path}"
        try:
            async with self.session.post(
                url, json=body, headers=self._headers(), timeout=SMALL_TIMEOUT
            ) as r:
                data = await r.read()
                if r.status != 200:
                    raise PeerError(f"{addr} answered {r.status} to {path}: {_err(data)}", r.status)
                return json.loads(data)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError(f"{addr} unreachable for {path}: {_describe(exc)}") from None

    async def stage(self, addr: str, upload: str, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        url = f"http://{addr}/v1/internal/store/stage/{upload}"
        try:
            async with self.session.put(
                url, data=chunks, headers=self._headers(), timeout=STREAM_TIMEOUT
            ) as r:
                data = await r.read()
                if r.status != 200:
                    raise PeerError(f"{addr} refused the upload: {_err(data)}", r.status)
                out: dict[str, Any] = json.loads(data)
                return out
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError(f"{addr} failed during the upload: {_describe(exc)}") from None

    async def push_version(
        self, addr: str, name: str, v: Version, chunks: AsyncIterator[bytes]
    ) -> None:
        """Send one committed version to a peer that lacks it (re-replication)."""
        headers = self._headers(
            {
                "X-Idunno-Version": str(v.version),
                "X-Idunno-Sha256": v.sha256,
                "X-Idunno-Size": str(v.size),
                "X-Idunno-Created": repr(v.created_at),
            }
        )
        url = f"http://{addr}/v1/internal/store/replica?name={quote(name, safe='')}"
        try:
            async with self.session.put(
                url, data=chunks, headers=headers, timeout=STREAM_TIMEOUT
            ) as r:
                if r.status != 200:
                    raise PeerError(f"{addr} refused a replica: {_err(await r.read())}", r.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError(f"{addr} failed receiving a replica: {_describe(exc)}") from None

    async def open_blob(self, addr: str, name: str, version: int) -> aiohttp.ClientResponse:
        """A streaming response with the bytes of a verified version (caller releases it)."""
        url = f"http://{addr}/v1/internal/store/blob?name={quote(name, safe='')}&version={version}"
        try:
            r = await self.session.get(url, headers=self._headers(), timeout=STREAM_TIMEOUT)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError(f"{addr} unreachable for a read: {_describe(exc)}") from None
        if r.status != 200:
            body = await r.read()
            r.release()
            raise PeerError(f"{addr} could not serve {name!r} v{version}: {_err(body)}", r.status)
        return r


def _err(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error", ""))[:300]
    except (ValueError, AttributeError):
        return data[:200].decode("utf-8", "replace")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
