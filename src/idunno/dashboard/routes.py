"""The dashboard's HTTP routes, on the node's own address and port.

Public (no token; idunno.node.api lists them in PUBLIC_PATHS/PUBLIC_PREFIXES): `GET /` (the
page) and `GET /dashboard/{app.js,style.css,icon.svg}`. They are fixed files shipped in the
package: no data, no key, no token, nothing from outside the node (a Content-Security-Policy
header keeps the page to its own origin).

Authenticated (bearer token; the stream also takes `?access_token=`):
- `GET /v1/dashboard/snapshot`: one snapshot (see idunno.dashboard.hub);
- `GET /v1/dashboard/stream`: text/event-stream; a `history` event (each job's rate over the
  last 2 minutes, as far as this node has watched), then a `snapshot` event about every second.
  It ends with an `expired` event when the token expires (the page then asks for a new one),
  and with a `closing` event when the node stops;
- `GET /v1/dashboard/coordinator`: the coordinator's jobs, assignment and events, for the other
  nodes' dashboards (503 on a node that does not lead).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from idunno.dashboard.hub import COORDINATOR_PATH, Hub, sse
from idunno.transport import tokens

if TYPE_CHECKING:
    from idunno.node.server import Node

STATIC_DIR = Path(__file__).with_name("static")
CONTENT_TYPES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "icon.svg": "image/svg+xml",
}
# The page may load and contact nothing but this node.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
KEEPALIVE_S = 15.0
HUB_KEY: web.AppKey[Hub] = web.AppKey("dashboard_hub", Hub)


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """The static files, read once (a few tens of KB)."""
    out = {}
    for name, content_type in CONTENT_TYPES.items():
        body = (directory / name).read_bytes()
        out[name] = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return out


def _serve(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
    )


def _not_found(name: str) -> web.Response:
    return web.json_response(
        {"error": f"no dashboard file {name!r}: the dashboard is at /"}, status=404
    )


def _token_expiry(request: web.Request) -> float | None:
    """The expiry of the (already checked) token this request came with."""
    header = request.headers.get("Authorization", "")
    token = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
    token = token or request.query.get("access_token", "")
    parts = token.split(".")
    if len(parts) == 3 and parts[0] == tokens.PREFIX and parts[1].isdigit():
        return float(parts[1])
    return None


def add_routes(app: web.Application, node: Node) -> None:
    assets = load_assets()
    hub = Hub(node)
    app[HUB_KEY] = hub

    async def index(request: web.Request) -> web.Response:
        return _serve(request, assets["index.html"])

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = assets.get(name)
        return _serve(request, found) if found is not None else _not_found(name)

    async def on_shutdown(app: web.Application) -> None:
        await hub.close()

    app.on_shutdown.append(on_shutdown)
    r = app.router
    r.add_get("/", index)
    r.add_get("/dashboard/", index)
    r.add_get("/dashboard/{name}", asset)
    r.add_get("/v1/dashboard/snapshot", get_snapshot)
    r.add_get("/v1/dashboard/stream", get_stream)
    r.add_get(COORDINATOR_PATH, get_coordinator)


async def get_snapshot(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    latest = hub.latest
    if latest is not None and hub.watchers and time.time() - float(latest["t"]) < 2.0:
        return web.json_response(latest)
    return web.json_response(await hub.build())


async def get_coordinator(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    out = await hub.coordinator_answer()
    if out is None:
        return web.json_response(
            {"error": f"node {hub.node.name} is not the coordinator: ask the one it names"},
            status=503,
        )
    return web.json_response(out)


async def get_stream(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    expiry = _token_expiry(request)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache, no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    q = hub.subscribe()
    try:
        await resp.write(b"retry: 2000\n\n" + sse("history", hub.history()))
        while True:
            try:
                message = await asyncio.wait_for(q.get(), KEEPALIVE_S)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if message is None:
                await resp.write(sse("closing", {"reason": f"node {hub.node.name} is stopping"}))
                break
            if expiry is not None and time.time() >= expiry:
                await resp.write(
                    sse(
                        "expired",
                        {"error": "token expired: run `idunno dashboard` for a new link"},
                    )
                )
                break
            await resp.write(message)
    except (ConnectionError, OSError):
        pass  # the page went away
    finally:
        hub.unsubscribe(q)
    return resp
