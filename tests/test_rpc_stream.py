"""Streamed answers of the control plane's RPC (idunno.control.rpc): a worker sends a batch's
results in parts, then the whole answer; errors after the first part keep their status, and an
answer cut short counts as an unreachable peer (the coordinator requeues the batch)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from idunno.control.rpc import MSGPACK, MSGPACK_SEQ, Rpc, RpcError

KEY = b"k" * 32


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


async def _stream(request: web.Request, parts: list[Any], end: Any | None) -> web.StreamResponse:
    out = web.StreamResponse(headers={"Content-Type": MSGPACK_SEQ})
    await out.prepare(request)
    for part in parts:
        data = _pack(part)
        # Split each part across two writes: the reader must reassemble them.
        await out.write(data[:3])
        await out.write(data[3:])
    if end is None:  # the peer dies mid-answer
        assert request.transport is not None
        request.transport.close()
        return out
    await out.write(_pack(end))
    await out.write_eof()
    return out


def _app() -> web.Application:
    async def ok(request: web.Request) -> web.StreamResponse:
        body = msgpack.unpackb(await request.read(), raw=False)
        parts = [{"partial": {"results": [q]}} for q in body["queries"]]
        return await _stream(request, parts, {"status": 200, "reply": {"all": body["queries"]}})

    async def stale(request: web.Request) -> web.StreamResponse:
        end = {"status": 409, "reply": {"error": "stale epoch 1: the coordinator is at 2"}}
        return await _stream(request, [{"partial": {"results": [1]}}], end)

    async def cut(request: web.Request) -> web.StreamResponse:
        return await _stream(request, [{"partial": {"results": [1]}}], None)

    async def garbage(request: web.Request) -> web.StreamResponse:
        return await _stream(request, [[1, 2]], {"status": 200, "reply": {}})

    async def plain(request: web.Request) -> web.Response:
        return web.Response(body=_pack({"plain": True}), content_type=MSGPACK)

    app = web.Application()
    for name, handler in [("ok", ok), ("stale", stale), ("cut", cut), ("garbage", garbage)]:
        app.router.add_post(f"/{name}", handler)
    app.router.add_post("/plain", plain)
    return app


def _with_server(test: Callable[[Rpc, str], Awaitable[None]]) -> None:
    async def main() -> None:
        async with TestServer(_app()) as server, aiohttp.ClientSession() as session:
            await test(Rpc(session, KEY), f"{server.host}:{server.port}")

    asyncio.run(main())


def test_parts_reach_the_caller_in_order_before_the_whole_answer() -> None:
    async def test(rpc: Rpc, addr: str) -> None:
        seen: list[Any] = []
        reply = await rpc.call(addr, "/ok", {"queries": [4, 2, 9]}, 5, seen.append)
        assert seen == [{"results": [4]}, {"results": [2]}, {"results": [9]}]
        assert reply == {"all": [4, 2, 9]}
        # A caller that does not take parts still gets the whole answer.
        assert await rpc.call(addr, "/ok", {"queries": [1]}, 5) == {"all": [1]}
        # A plain answer is unchanged, and no part is reported.
        assert await rpc.call(addr, "/plain", {}, 5, seen.append) == {"plain": True}
        assert len(seen) == 3

    _with_server(test)


def test_an_error_after_parts_keeps_its_status_and_message() -> None:
    async def test(rpc: Rpc, addr: str) -> None:
        seen: list[Any] = []
        with pytest.raises(RpcError) as raised:
            await rpc.call(addr, "/stale", {}, 5, seen.append)
        assert raised.value.status == 409 and not raised.value.unreachable
        assert "stale epoch 1" in str(raised.value)
        assert seen == [{"results": [1]}]

    _with_server(test)


def test_an_answer_cut_short_is_an_unreachable_peer() -> None:
    async def test(rpc: Rpc, addr: str) -> None:
        seen: list[Any] = []
        with pytest.raises(RpcError) as raised:
            await rpc.call(addr, "/cut", {}, 5, seen.append)
        assert raised.value.unreachable, raised.value
        assert seen == [{"results": [1]}]
        with pytest.raises(RpcError, match="streamed answer holds a list"):
            await rpc.call(addr, "/garbage", {}, 5, seen.append)

    _with_server(test)
