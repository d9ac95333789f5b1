"""The worker's internal HTTP routes (node to node; the node's middleware checks the token).

Bodies and replies are msgpack (`application/msgpack`). Errors are msgpack `{"error": "..."}`:
409 for a stale epoch, 400 for a malformed request, 404 for a run this worker does not have
(`collect`), 413 for an oversized request, 503 when the worker cannot run work now (its executor
died and was restarted, or the node takes no inference work).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgpack
from aiohttp import web

from idunno.control.fence import StaleEpoch
from idunno.inference.worker import WorkerService, WorkerUnavailable

WORKER_KEY: web.AppKey[WorkerService] = web.AppKey("worker")
MSGPACK: Final = "application/msgpack"
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


async def _answer(request: web.Request, call: Call) -> web.Response:
    worker = request.app[WORKER_KEY]
    try:
        return _reply(await call(worker, await _body(request)))
    except StaleEpoch as exc:  # a ValueError: before the 400 below
        return _error(409, str(exc))
    except WorkerUnavailable as exc:
        return _error(503, str(exc))
    except KeyError as exc:
        return _error(404, str(exc.args[0]) if exc.args else "no such run")
    except ValueError as exc:
        return _error(400, str(exc))
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body larger than {MAX_REQUEST} bytes")


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


async def post_run(request: web.Request) -> web.Response:
    return await _answer(request, _run)


async def get_status(request: web.Request) -> web.Response:
    return _reply(request.app[WORKER_KEY].status())


def add_routes(app: web.Application, worker: WorkerService) -> None:
    app[WORKER_KEY] = worker
    app.router.add_post("/v1/internal/work/load", post_load)
    app.router.add_post("/v1/internal/work/run", post_run)
    app.router.add_post("/v1/internal/work/collect", post_collect)
    app.router.add_get("/v1/internal/work/status", get_status)
