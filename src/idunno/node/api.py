"""The node's HTTP API under /v1/ (aiohttp). Every route needs a bearer token minted from the
cluster key; errors are JSON `{"error": "<one line>"}`."""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from idunno.membership.codec import DecodeError
from idunno.node.grep import DEFAULT_LIMIT, MAX_LIMIT, BadPattern, Matcher, search
from idunno.node.logs import LOG_FILE
from idunno.store.api import store_errors
from idunno.transport import tokens

if TYPE_CHECKING:
    from idunno.node.server import Node

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NODE_KEY: web.AppKey[Node] = web.AppKey("node")
MAX_BODY = 4 << 20


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# Served without a token: they hold no data and no secret (the dashboard page asks for a
# token, or reads it from the link `idunno dashboard` prints, and sends it with each request).
PUBLIC_PATHS = frozenset({"/", "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/dashboard/",)
# GET routes that also take the token as `?access_token=` (RFC 6750), for a browser's
# EventSource, which cannot send headers.
QUERY_TOKEN_PREFIXES = ("/v1/dashboard/",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def auth_middleware(key: bytes) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_public(request.path) and request.method in ("GET", "HEAD"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        query_token = request.query.get("access_token")
        if (
            not header
            and query_token
            and request.method == "GET"
            and request.path.startswith(QUERY_TOKEN_PREFIXES)
        ):
            header = f"Bearer {query_token}"
        if not header.startswith("Bearer "):
            return error(
                401,
                "missing bearer token: send `Authorization: Bearer <token>` "
                "(the idunno CLI does this from the cluster key)",
            )
        reason = tokens.check(key, header[len("Bearer ") :].strip())
        if reason is not None:
            return error(401, reason)
        return await handler(request)

    return middleware


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return error(exc.status, exc.reason or "request failed")
        raise
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug: logged with its traceback, answered in one line
        node = request.app[NODE_KEY]
        node.log(
            "http_error",
            level="error",
            method=request.method,
            path=request.path,
            error=f"{type(exc).__name__}: {exc}"[:300],
            traceback=traceback.format_exc()[-3000:],
        )
        return error(
            500,
            f"internal error on node {node.name} ({type(exc).__name__}): "
            "see its log (`idunno logs grep http_error`)",
        )


def member_row(node: Node, m: Any) -> dict[str, Any]:
    shell = node.membership
    return {
        "id": m.name,
        "address": m.addr,
        "status": m.status.value,
        "incarnation": m.incarnation,
        "changed_at": round(shell.wall(m.changed_at), 3),
        "role": node.control.role_of(m.name),
    }


async def get_members(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    core = node.membership.core
    rows = [member_row(node, m) for m in sorted(core.members.values(), key=lambda m: m.name)]
    return web.json_response({"self": core.name, "members": rows})


async def get_self(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    core = node.membership.core
    me = core.members[core.name]
    shell = node.membership
    return web.json_response(
        {
            **member_row(node, me),
            "pid": os.getpid(),
            "data_dir": str(node.data_dir),
            "preset": node.preset,
            "started_at": round(node.started_at, 3),
            "live_members": core.live_count(),
            "awareness": core.awareness.score,
            "traffic": {k: v for k, v in sorted(shell.stats.items())},
            "dropped": dict(shell.opener.dropped),
        }
    )


async def post_leave(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    node.request_stop(leave=True)
    return web.json_response({"leaving": node.name}, status=202)


async def post_push_pull(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    body = await request.read()
    try:
        reply = await node.membership.handle_push_pull(body)
    except DecodeError as exc:
        return error(400, f"bad push-pull body: {exc}")
    return web.Response(body=reply, content_type="application/msgpack")


async def get_grep(request: web.Request) -> web.Response:
    """GET /v1/logs/grep?pattern=P[&regex=1][&ignore_case=1][&limit=N]: this node's log lines
    that match, and how many there are."""
    node = request.app[NODE_KEY]
    q = request.query
    try:
        matcher = Matcher(q.get("pattern", ""), q.get("regex") == "1", q.get("ignore_case") == "1")
    except BadPattern as exc:
        return error(400, str(exc))
    limit_text = q.get("limit", str(DEFAULT_LIMIT))
    if not (limit_text.isascii() and limit_text.isdigit()):
        return error(400, f"?limit= must be a whole number, got {limit_text!r}")
    limit = min(int(limit_text), MAX_LIMIT)
    path = node.data_dir / LOG_FILE

    def scan() -> tuple[list[str], int]:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return search(matcher, f, limit)
        except FileNotFoundError:
            return [], 0

    lines, count = await asyncio.to_thread(scan)
    return web.json_response(
        {"node": node.name, "count": count, "lines": lines, "truncated": count > len(lines)}
    )


def build_app(node: Node, key: bytes) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware(key), store_errors],
        client_max_size=MAX_BODY,
    )
    app[NODE_KEY] = node
    app.router.add_get("/v1/members", get_members)
    app.router.add_get("/v1/self", get_self)
    app.router.add_post("/v1/leave", post_leave)
    app.router.add_post("/v1/internal/push-pull", post_push_pull)
    app.router.add_get("/v1/logs/grep", get_grep)
    return app
