"""Node-to-node calls of the control plane: msgpack over HTTP with the cluster's bearer token."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import msgpack

from idunno.transport import tokens

MSGPACK = "application/msgpack"


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

    async def call(self, addr: str, path: str, body: Any, timeout: float) -> Any:
        """POST `body` to a node's internal route; its decoded answer, or RpcError."""
        return await self._request("POST", addr, path, pack(body), timeout)

    async def get(self, addr: str, path: str, timeout: float) -> Any:
        return await self._request("GET", addr, path, None, timeout)

    async def _request(
        self, method: str, addr: str, path: str, data: bytes | None, timeout: float
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
                data = await r.read()
                if r.status != 200:
                    raise RpcError(f"{addr}: {_error_text(data, r.status)}", r.status)
                return unpack(data)
        except (aiohttp.ClientError, OSError) as exc:
            raise RpcError(f"{addr} unreachable: {type(exc).__name__}: {exc}"[:300]) from None
        except TimeoutError:
            raise RpcError(f"{addr} did not answer within {timeout:g} s") from None


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
