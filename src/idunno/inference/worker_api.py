"""The worker's internal HTTP routes (node to node; the node's middleware checks the token).

Bodies and replies are msgpack (`application/msgpack`). Errors are msgpack `{"error": "..."}`:
409 for a stale epoch, 400 for a malformed request, 404 for a run this worker does not have
(`collect`), 413 for an oversized request, 503 when the worker cannot run work now (its executor
died and was restarted, or the node takes no inference work).

A run asked to `stream` whose model streams (its first sub-batch's results come before the
whole batch's) is answered as a sequence of msgpack maps (`application/x-msgpack-seq`):
`{"partial": {"results", "per_query_s"}}` for each sub-batch as it is done, then one
`{"status": code, "reply": reply}`, where code and reply are what the plain answer would have
been. A run that streams nothing gets the plain answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgpack
from aiohttp import web

from idunno.control.fence import StaleEpoch
from idunno.inference.worker import WorkerService, WorkerUnavailable

WORKER_KEY: web.AppKey[WorkerService] = web.AppKey("worker")
MSGPACK: Final = "application/msgpack"
MSGPACK_SEQ: Final = "application/x-msgpack-seq"
# A run request is a few bytes per query; the node's app allows 4 MiB bodies for everything.
MAX_REQUEST: Final = 1 << 20

Call = Callable[[WorkerService, dict[str, Any]], Awaitable[dict[str, Any]]]


def _reply(obj: Any, status: int = 200) -> web.Response:
    body = msgpack.packb(obj, use_bin_type=True)
    return web.Response(body=body, status=status, content_type=MSGPACK)


def _error(status: int, message: str) -> web.Response:
    return _reply({"error": message}, status)


async def _body(request: web.Request) -> dict[str, Any]:
    size = request.content_length
    if size is not None and size > MAX_REQUEST:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_REQUEST, actual_size=size)
    data = await request.read()  # bounded by the app's client_max_size too
    if len(data) > MAX_REQUEST:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_REQUEST, actual_size=len(data))
    try:
        obj = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"body is not msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"body must be a msgpack map, got {type(obj).__name__}")
    return obj


async def _outcome(request: web.Request, call: Call) -> tuple[int, Any]:
    """(status, reply) of a call: the reply, or {"error"} with the status that names why."""
    worker = request.app[WORKER_KEY]
    try:
        return 200, await call(worker, await _body(request))
    except StaleEpoch as exc:  # a ValueError: before the 400 below
        return 409, {"error": str(exc)}
    except WorkerUnavailable as exc:
        return 503, {"error": str(exc)}
    except KeyError as exc:
        return 404, {"error": str(exc.args[0]) if exc.args else "no such run"}
    except ValueError as exc:
        return 400, {"error": str(exc)}
    except web.HTTPRequestEntityTooLarge:
        return 413, {"error": f"request body larger than {MAX_REQUEST} bytes"}


async def _answer(request: web.Request, call: Call) -> web.Response:
    status, obj = await _outcome(request, call)
    return _reply(obj, status)


async def _load(worker: WorkerService, body: dict[str, Any]) -> dict[str, Any]:
    epoch: Any = body.get("epoch")  # checked by the worker, like every field
    models: Any = body.get("models")
    coordinator: Any = body.get("coordinator", "")
    return {"worker": worker.me, "models": await worker.load(epoch, models, coordinator)}


async def _run(worker: WorkerService, body: dict[str, Any]) -> dict[str, Any]:
    return await worker.run(body)


async def _collect(worker: WorkerService, body: dict[str, Any]) -> dict[str, Any]:
    return await worker.collect(body)


async def post_collect(request: web.Request) -> web.Response:
    return await _answer(request, _collect)


async def post_load(request: web.Request) -> web.Response:
    return await _answer(request, _load)


async def post_run(request: web.Request) -> web.StreamResponse:
    partials: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def run(worker: WorkerService, body: dict[str, Any]) -> dict[str, Any]:
        return await worker.run(body, partials.put_nowait if body.get("stream") is True else None)

    answer = asyncio.ensure_future(_outcome(request, run))
    partial: asyncio.Future[dict[str, Any]] | None = None
    stream: web.StreamResponse | None = None
    try:
        while True:
            partial = asyncio.ensure_future(partials.get())
            await asyncio.wait({answer, partial}, return_when=asyncio.FIRST_COMPLETED)
            if not partial.done():
                partial.cancel()
                break
            if stream is None:
                stream = web.StreamResponse(headers={"Content-Type": MSGPACK_SEQ})
                await stream.prepare(request)
            await stream.write(msgpack.packb({"partial": partial.result()}, use_bin_type=True))
        status, obj = answer.result()
        if stream is None:
            return _reply(obj, status)
        # Sub-batches still queued are in the reply anyway.
        await stream.write(msgpack.packb({"status": status, "reply": obj}, use_bin_type=True))
        await stream.write_eof()
        return stream
    finally:  # when the handler is cancelled (the caller left); the run itself goes on
        answer.cancel()
        if partial is not None:
            partial.cancel()


async def get_status(request: web.Request) -> web.Response:
    return _reply(request.app[WORKER_KEY].status())


def add_routes(app: web.Application, worker: WorkerService) -> None:
    app[WORKER_KEY] = worker
    app.router.add_post("/v1/internal/work/load", post_load)
    app.router.add_post("/v1/internal/work/run", post_run)
    app.router.add_post("/v1/internal/work/collect", post_collect)
    app.router.add_get("/v1/internal/work/status", get_status)
