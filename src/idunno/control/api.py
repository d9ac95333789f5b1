"""HTTP routes of the control plane.

Public (JSON, any node): /v1/jobs..., /v1/rates, /v1/assignment, /v1/train, /v1/control. A node
that is not the coordinator forwards the request to the coordinator it knows of and relays the
answer; with no coordinator reachable it answers 503 (the client retries through a failover).
Internal (msgpack, node to node): /v1/internal/control/reign, /mirror, /watch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from idunno.control.coordinator import Coordinator, Deposed, JobError
from idunno.control.fence import StaleEpoch
from idunno.control.plane import REIGN_PATH, WATCH_PATH, ControlPlane
from idunno.control.rpc import MSGPACK, pack, unpack
from idunno.control.state import RATE_WINDOW_S
from idunno.inference.catalog import CatalogError

PLANE_KEY: web.AppKey[ControlPlane] = web.AppKey("control")
FORWARDED = "X-Idunno-Forwarded"
FORWARD_TIMEOUT_S = 4.0  # below the CLI's 5 s: a silent coordinator becomes a 503 to retry
TRAIN_TIMEOUT_S = 150.0  # training every worker may take a while
MAX_RESULTS_LIMIT = 100_000

Handler = Callable[[web.Request, Coordinator], Awaitable[Any]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _no_coordinator() -> web.Response:
    return _error(
        503,
        "no coordinator reachable yet (an election or failover is in progress, or too few "
        "nodes are live for the store): retry in a moment",
    )


def _leading(handler: Handler, status: int = 200) -> Callable[[web.Request], Awaitable[Any]]:
    """Run `handler` on the coordinator: here if we lead, else forwarded to it."""

    async def route(request: web.Request) -> web.StreamResponse:
        plane = request.app[PLANE_KEY]
        coordinator = plane.coordinator
        if coordinator is not None and coordinator.deposed:
            return _no_coordinator()  # stepping down: the client retries and finds the new one
        if coordinator is None:
            return await _forward(request, plane)
        try:
            out = await handler(request, coordinator)
        except JobError as exc:
            return _error(exc.status, str(exc))
        except CatalogError as exc:
            return _error(400, str(exc))
        except Deposed:
            return _no_coordinator()
        return web.json_response(out, status=status)

    return route


async def _forward(request: web.Request, plane: ControlPlane) -> web.StreamResponse:
    addr = plane.coordinator_addr()
    if addr is None or request.headers.get(FORWARDED):
        return _no_coordinator()
    headers = {
        "Authorization": request.headers.get("Authorization", ""),
        "Content-Type": request.headers.get("Content-Type", "application/json"),
        FORWARDED: plane.me,
    }
    body = await request.read()
    try:
        async with plane.rpc.session.request(
            request.method,
            f"http://{addr}{request.rel_url}",
            data=body or None,
            headers=headers,
            timeout=aiohttp.ClientTimeout(
                total=TRAIN_TIMEOUT_S if request.path == "/v1/train" else FORWARD_TIMEOUT_S
            ),
        ) as r:
            data = await r.read()
            return web.Response(body=data, status=r.status, content_type="application/json")
    except (aiohttp.ClientError, OSError, TimeoutError):
        plane.kick()
        return _no_coordinator()


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except (ValueError, UnicodeDecodeError):
        raise JobError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise JobError("the request body must be a JSON object")
    return body


def _int_param(request: web.Request, key: str, default: int | None) -> int | None:
    text = request.query.get(key)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()):
        raise JobError(f"?{key}= must be a whole number, got {text!r}")
    return min(int(text), MAX_RESULTS_LIMIT)


# --- public handlers ---------------------------------------------------------------------------


async def submit(request: web.Request, c: Coordinator) -> Any:
    return {"job": await c.submit(await _body(request))}


async def list_jobs(request: web.Request, c: Coordinator) -> Any:
    return {"jobs": c.jobs_view(), "coordinator": c.me, "epoch": c.epoch}


async def get_job(request: web.Request, c: Coordinator) -> Any:
    job_id = c.resolve(request.match_info["job"])
    return {"job": next(j for j in c.jobs_view() if j["id"] == job_id)}


async def cancel(request: web.Request, c: Coordinator) -> Any:
    return {"job": await c.cancel(request.match_info["job"])}


async def batch_size(request: web.Request, c: Coordinator) -> Any:
    body = await _body(request)
    return await c.set_batch_size(request.match_info["job"], body.get("batch_size"))


async def rates(request: web.Request, c: Coordinator) -> Any:
    key = request.query.get("job")
    wanted = c.resolve(key) if key else None
    jobs = [
        {k: j[k] for k in ("id", "name", "rate", "done", "total", "status")}
        for j in c.jobs_view()
        if wanted is None or j["id"] == wanted
    ]
    return {"window_s": RATE_WINDOW_S, "jobs": jobs}


async def stats(request: web.Request, c: Coordinator) -> Any:
    return c.state.stats(c.resolve(request.match_info["job"]))


async def results(request: web.Request, c: Coordinator) -> Any:
    offset = _int_param(request, "offset", 0) or 0
    limit = _int_param(request, "limit", None)
    return c.results(request.match_info["job"], request.query.get("query"), offset, limit)


async def assignment(request: web.Request, c: Coordinator) -> Any:
    plane = request.app[PLANE_KEY]
    standby = plane.reign.standby if plane.reign else None
    return {"epoch": c.epoch, "coordinator": c.me, "standby": standby, **c.assignment()}


async def train(request: web.Request, c: Coordinator) -> Any:
    body = await _body(request)
    models = body.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise JobError("'models' must be a list of model names")
    return await c.train(models)


async def control(request: web.Request) -> web.Response:
    plane = request.app[PLANE_KEY]
    reign = plane.reign
    return web.json_response(
        {
            "epoch": reign.epoch if reign else 0,
            "coordinator": reign.coordinator if reign else None,
            "standby": reign.standby if reign else None,
            "role": plane.role_of(plane.me),
            "fence": plane.fence.epoch,
        }
    )


# --- internal handlers -------------------------------------------------------------------------


async def _msgpack(request: web.Request) -> dict[str, Any]:
    try:
        body = unpack(await request.read())
    except Exception:  # any undecodable body is the sender's fault
        raise web.HTTPBadRequest(reason="bad msgpack body") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="body must be a map")
    return body


def _packed(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=pack(obj), status=status, content_type=MSGPACK)


async def _apply_internal(
    request: web.Request, apply: Callable[[dict[str, Any]], dict[str, Any]], what: str
) -> web.Response:
    """A control message from another node: 409 for a stale epoch, 400 for a bad message."""
    try:
        return _packed(apply(await _msgpack(request)))
    except StaleEpoch as exc:
        return _packed({"error": str(exc)}, 409)
    except (KeyError, ValueError, TypeError) as exc:
        return _packed({"error": f"bad {what}: {exc}"}, 400)


async def i_reign(request: web.Request) -> web.Response:
    return await _apply_internal(request, request.app[PLANE_KEY].receive_reign, "announcement")


async def i_mirror(request: web.Request) -> web.Response:
    return await _apply_internal(request, request.app[PLANE_KEY].receive_mirror, "mirror message")


async def i_watch(request: web.Request) -> web.StreamResponse:
    plane = request.app[PLANE_KEY]
    epoch_text = request.query.get("epoch", "")
    coordinator = plane.coordinator
    if (
        coordinator is None
        or not (epoch_text.isascii() and epoch_text.isdigit())
        or int(epoch_text) != coordinator.epoch
    ):
        return _error(409, "not the coordinator of that epoch")
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)
    await plane.watch_stream(resp.write, int(epoch_text))
    return resp


def add_routes(app: web.Application, plane: ControlPlane) -> None:
    app[PLANE_KEY] = plane
    r = app.router
    r.add_post("/v1/jobs", _leading(submit, 201))
    r.add_get("/v1/jobs", _leading(list_jobs))
    r.add_get("/v1/jobs/{job}", _leading(get_job))
    r.add_post("/v1/jobs/{job}/cancel", _leading(cancel))
    r.add_post("/v1/jobs/{job}/batch-size", _leading(batch_size))
    r.add_get("/v1/jobs/{job}/stats", _leading(stats))
    r.add_get("/v1/jobs/{job}/results", _leading(results))
    r.add_get("/v1/rates", _leading(rates))
    r.add_get("/v1/assignment", _leading(assignment))
    r.add_post("/v1/train", _leading(train))
    r.add_get("/v1/control", control)
    r.add_post(REIGN_PATH, i_reign)
    r.add_post("/v1/internal/control/mirror", i_mirror)
    r.add_get(WATCH_PATH, i_watch)
