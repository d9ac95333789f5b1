"""HTTP routes of the store. Public: /v1/files/NAME (PUT, GET, DELETE; bodies stream),
/v1/ls, /v1/store, /v1/versions. Internal (node to node): /v1/internal/store/*."""

from __future__ import annotations

import errno
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from idunno.control.fence import StaleEpoch
from idunno.store.disk import CHUNK, Conflict, Corrupt, StoreError, Tombstone, Version
from idunno.store.names import InvalidName, validate
from idunno.store.peers import PeerError
from idunno.store.service import NotFound, StoreService, Unavailable

STORE_KEY: web.AppKey[StoreService] = web.AppKey("store")
FILES_PREFIX = "/v1/files/"
SMALL_FILE = 16 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def store_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map store failures to one-line JSON errors with fitting status codes."""
    try:
        return await handler(request)
    except InvalidName as exc:
        return _error(400, str(exc))
    except NotFound as exc:
        return _error(404, str(exc))
    except (Conflict, Corrupt, StaleEpoch) as exc:
        return _error(409, str(exc))
    except (Unavailable, PeerError) as exc:
        return _error(503, str(exc))
    except StoreError as exc:
        return _error(500, str(exc))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            svc = request.app[STORE_KEY]
            return _error(507, f"disk full on node {svc.me}: free space there or add nodes")
        raise


def _name_from_path(request: web.Request) -> str:
    """The file name exactly as sent (before any URL normalization could rewrite `..`)."""
    raw = request.raw_path.split("?", 1)[0]
    try:
        name = unquote(raw[len(FILES_PREFIX) :], errors="strict")
    except UnicodeDecodeError:
        raise InvalidName("file name is not valid UTF-8 once %-decoded: rename it") from None
    return validate(name)


def _query_name(request: web.Request) -> str:
    name = request.query.get("name")
    if name is None:
        raise web.HTTPBadRequest(reason="missing ?name=")
    return validate(name)


def _int_query(request: web.Request, key: str) -> int | None:
    text = request.query.get(key)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InvalidName(f"?{key}= must be a positive whole number, got {text!r}")
    return int(text)


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


# --- public -----------------------------------------------------------------------------


async def put_file(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    name = _name_from_path(request)
    out = await svc.put(name, _body_chunks(request))
    return web.json_response(out)


async def get_file(request: web.Request) -> web.StreamResponse:
    svc = request.app[STORE_KEY]
    name = _name_from_path(request)
    v, holders = await svc.choose(name, _int_query(request, "version"))
    if holders[0] == svc.me:
        if v.size > SMALL_FILE or await svc.verify_local(name, v):
            return await _stream(request, v, svc.local_chunks(name, v))
        holders = holders[1:]
        if not holders:
            raise Unavailable(f"the only copy of {name!r} v{v.version} is corrupt: retry later")
    live = svc.live()
    if request.headers.get("X-Idunno-Redirect") == "ok" and holders[0] in live:
        # Our own client follows a redirect to a holder: one network hop instead of two.
        location = f"http://{live[holders[0]]}{request.raw_path.split('?', 1)[0]}"
        raise web.HTTPTemporaryRedirect(f"{location}?version={v.version}")
    last_error = ""
    for holder in holders:
        addr = live.get(holder)
        if addr is None:
            continue
        try:
            resp = await svc.peers.open_blob(addr, name, v.version)
        except PeerError as exc:
            last_error = str(exc)
            continue
        try:
            return await _stream(request, v, resp.content.iter_chunked(CHUNK))
        finally:
            resp.release()
    raise Unavailable(f"no healthy replica of {name!r} v{v.version} answered ({last_error})")


async def _stream(
    request: web.Request, v: Version, chunks: AsyncIterator[bytes]
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(v.size),
            "X-Idunno-Version": str(v.version),
            "X-Idunno-Sha256": v.sha256,
            "X-Idunno-Created": repr(v.created_at),
        }
    )
    await resp.prepare(request)
    async for chunk in chunks:
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def delete_file(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    return web.json_response(await svc.delete(_name_from_path(request)))


async def get_ls(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    name = request.query.get("name")
    if name is not None:
        validate(name)
        found = await svc.locate(name)
        # A node back from an outage may still list versions a tombstone elsewhere removed.
        tomb = max((m.tombstone.version for m in found.values() if m.tombstone), default=0)
        holders = [
            {
                "node": member,
                "versions": [v.version for v in meta.versions if v.version > tomb],
                "tombstone": meta.tombstone.version if meta.tombstone else None,
            }
            for member, meta in found.items()
            if meta.versions or meta.tombstone
        ]
        if not any(h["versions"] for h in holders):
            raise NotFound(f"no file named {name!r} in the cluster (see `idunno ls`)")
        return web.json_response({"name": name, "holders": holders})
    return web.json_response({"files": _summarize(await svc.inventory_everywhere())})


def _summarize(inventories: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    tombs: dict[str, int] = {}
    for member, inv in inventories.items():
        for name, meta in inv.items():
            if meta.get("tombstone"):
                tombs[name] = max(tombs.get(name, 0), meta["tombstone"]["version"])
            for v in meta["versions"]:
                f = files.setdefault(name, {"name": name, "version": 0, "holders": {}})
                f["holders"].setdefault(v["version"], set()).add(member)
                if v["version"] > f["version"]:
                    f.update(version=v["version"], size=v["size"], created_at=v["created_at"])
    out = []
    for name, f in sorted(files.items()):
        if f["version"] <= tombs.get(name, 0):
            continue
        out.append(
            {
                "name": name,
                "version": f["version"],
                "size": f["size"],
                "created_at": f["created_at"],
                "replicas": len(f["holders"][f["version"]]),
            }
        )
    return out


async def get_store(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    files = [
        {
            "name": name,
            "versions": [v.version for v in meta.versions],
            "size": meta.latest.size if meta.latest else 0,
            "tombstone": meta.tombstone.version if meta.tombstone else None,
        }
        for name, meta in sorted(svc.disk.meta.items())
    ]
    return web.json_response(
        {"node": svc.me, "files": files, "bytes": svc.disk.usage(), "last_repair": svc.last_round}
    )


async def get_versions(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    name = _query_name(request)
    found = await svc.locate(name)
    tomb = max((m.tombstone.version for m in found.values() if m.tombstone), default=0)
    versions: dict[int, Version] = {}
    for meta in found.values():
        for v in meta.versions:
            if v.version > tomb:
                versions[v.version] = v
    if not versions:
        raise NotFound(f"no file named {name!r} in the cluster (see `idunno ls`)")
    rows = [versions[k].__dict__ for k in sorted(versions, reverse=True)]
    return web.json_response({"name": name, "versions": rows})


# --- internal ---------------------------------------------------------------------------


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(reason="body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="body must be a JSON object")
    return body


async def i_stage(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    upload = request.match_info["upload"]
    if not upload.isalnum() or len(upload) > 64:
        raise web.HTTPBadRequest(reason="bad upload id")
    return web.json_response(await svc.stage(upload, _body_chunks(request)))


def _version_of(body: dict[str, Any]) -> Version:
    return Version(
        int(body["version"]), int(body["size"]), str(body["sha256"]), float(body["created_at"])
    )


async def i_commit(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    b = await _json(request)
    epoch = b.get("epoch")
    token = (int(epoch), str(b.get("owner") or "")) if epoch is not None else None
    await svc.commit(str(b["name"]), str(b["upload"]), _version_of(b), token)
    return web.json_response({})


async def i_assign(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    b = await _json(request)
    return web.json_response({"version": await svc.assign(str(b["name"]))})


async def i_top(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    return web.json_response(svc.top(await _json(request)))


async def i_reserve(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    return web.json_response(svc.reserve(await _json(request)))


async def i_meta(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    name = validate(str((await _json(request))["name"]))
    meta = svc.disk.meta.get(name)
    return web.json_response(meta.to_json() if meta else None)


async def i_delete(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    b = await _json(request)
    await svc.apply_tombstone(str(b["name"]), Tombstone(int(b["version"]), float(b["deleted_at"])))
    return web.json_response({})


async def i_sync(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    b = await _json(request)
    return web.json_response(await svc.answer_sync(b["files"]))


async def i_inventory(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE_KEY].inventory())


async def i_resync(request: web.Request) -> web.Response:
    request.app[STORE_KEY].kick()
    return web.json_response({})


async def i_replica(request: web.Request) -> web.Response:
    svc = request.app[STORE_KEY]
    name = _query_name(request)
    h = request.headers
    v = Version(
        int(h["X-Idunno-Version"]),
        int(h["X-Idunno-Size"]),
        h["X-Idunno-Sha256"],
        float(h.get("X-Idunno-Created", time.time())),
    )
    await svc.receive_replica(name, v, _body_chunks(request))
    return web.json_response({})


async def i_blob(request: web.Request) -> web.StreamResponse:
    svc = request.app[STORE_KEY]
    name = _query_name(request)
    number = _int_query(request, "version")
    meta = svc.disk.meta.get(name)
    v = meta.get(number) if meta and number else None
    if v is None:
        raise NotFound(f"{svc.me} does not hold {name!r} v{number}")
    # Small files are checked before the first byte, so a relaying gateway can still switch to
    # another replica; large ones are checked in the same pass as they stream.
    if v.size <= SMALL_FILE and not await svc.verify_local(name, v):
        raise Corrupt(f"{svc.me}'s copy of {name!r} v{number} is corrupt (repairing)")
    return await _stream(request, v, svc.local_chunks(name, v))


def add_routes(app: web.Application, svc: StoreService) -> None:
    app[STORE_KEY] = svc
    r = app.router
    r.add_put(FILES_PREFIX + r"{name:[\s\S]+}", put_file)
    r.add_get(FILES_PREFIX + r"{name:[\s\S]+}", get_file)
    r.add_delete(FILES_PREFIX + r"{name:[\s\S]+}", delete_file)
    r.add_get("/v1/ls", get_ls)
    r.add_get("/v1/store", get_store)
    r.add_get("/v1/versions", get_versions)
    p = "/v1/internal/store/"
    r.add_put(p + "stage/{upload}", i_stage)
    r.add_put(p + "replica", i_replica)
    r.add_get(p + "blob", i_blob)
    for name, fn in [
        ("commit", i_commit),
        ("assign", i_assign),
        ("top", i_top),
        ("reserve", i_reserve),
        ("meta", i_meta),
        ("delete", i_delete),
        ("sync", i_sync),
        ("inventory", i_inventory),
        ("resync", i_resync),
    ]:
        r.add_post(p + name, fn)
