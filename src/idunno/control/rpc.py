"""Node-to-node calls of the control plane: msgpack over HTTP with the cluster's bearer token."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import msgpack

from idunno.transport import tokens

MSGPACK = "application/msgpack"
MSGPACK_SEQ = "application/x-msgpack-seq"  # a streamed answer (see worker_api)


class RpcError(Exception):
    """The peer answered with an error status (`status`) or could not be reached (status 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def unreachable(self) -> bool:
        return self.status == 0


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class Rpc:
    def __init__(self, session: aiohttp.ClientSession, key: bytes) -> None:
        self.session = session
        self._key = key

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {tokens.mint(self._key, ttl=300)}",
            "Content-Type": MSGPACK,
        }

    async def call(
        self,
        addr: str,
        path: str,
        body: Any,
        timeout: float,
        on_partial: Callable[[Any], None] | None = None,
    ) -> Any:
        """POST `body` to a node's internal route; its decoded answer, or RpcError. A streamed
        answer's partial parts go to `on_partial` as they come (see worker_api)."""
        return await self._request("POST", addr, path, pack(body), timeout, on_partial)

    async def get(self, addr: str, path: str, timeout: float) -> Any:
        return await self._request("GET", addr, path, None, timeout)

    async def _request(
        self,
        method: str,
        addr: str,
        path: str,
        data: bytes | None,
        timeout: float,
        on_partial: Callable[[Any], None] | None = None,
    ) -> Any:
        url = f"http://{addr}{path}"
        try:
            async with self.session.request(
                method,
                url,
                data=data,
                headers=self.headers(),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as r:
                if r.status == 200 and r.content_type == MSGPACK_SEQ:
                    return await _streamed(addr, r, on_partial)
                data = await r.read()
                if r.status != 200:
                    raise RpcError(f"{addr}: {_error_text(data, r.status)}", r.status)
                return unpack(data)
        except (aiohttp.ClientError, OSError) as exc:
            raise RpcError(f"{addr} unreachable: {type(exc).__name__}: {exc}"[:300]) from None
        except TimeoutError:
            raise RpcError(f"{addr} did not answer within {timeout:g} s") from None


async def _streamed(
    addr: str, r: aiohttp.ClientResponse, on_partial: Callable[[Any], None] | None
) -> Any:
    """Read {"partial": ...} maps until the closing {"status", "reply"} (see worker_api)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    async for data in r.content.iter_any():
        unpacker.feed(data)
        for obj in unpacker:
            if not isinstance(obj, dict):
                raise RpcError(f"{addr}: a streamed answer holds a {type(obj).__name__}")
            if "partial" in obj:
                if on_partial is not None:
                    on_partial(obj["partial"])
                continue
            status, reply = obj.get("status"), obj.get("reply")
            if status != 200:
                status = status if isinstance(status, int) else 500
                error = reply.get("error") if isinstance(reply, dict) else None
                raise RpcError(f"{addr}: {error or f'HTTP {status}'}", status)
            return reply
    # The connection ended before the closing part: the peer died mid-answer.
    raise RpcError(f"{addr} unreachable: its answer stopped before the end")


def _error_text(data: bytes, status: int) -> str:
    try:
        obj = unpack(data)
    except Exception:  # any undecodable body is reported as text
        return f"HTTP {status}: {data[:200].decode('utf-8', 'replace')}"
    if isinstance(obj, dict) and "error" in obj:
        return str(obj["error"])
    return f"HTTP {status}"


async def refuses_connections(addr: str) -> bool | None:
    """True if nothing listens at addr (the process is gone), False if something accepts a
    connection, None if neither is known within the timeout (a paused or cut-off host)."""
    host, _, port = addr.rpartition(":")
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 0.5)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except (OSError, TimeoutError):
        return None
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()
    return False
