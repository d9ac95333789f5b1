"""The web dashboard every node serves on its own address and port.

`GET /` and `/dashboard/*` are static files that hold no data and no secret (the page asks for a
token, or takes it from the `#token=` fragment of the link `idunno dashboard` prints). Data comes
from authenticated routes: `GET /v1/dashboard/snapshot` (one JSON snapshot) and
`GET /v1/dashboard/stream` (server-sent events: a `snapshot` event about every second, which also
accepts the token as `?access_token=` because a browser's EventSource cannot send headers).
See `idunno.dashboard.routes` (HTTP) and `idunno.dashboard.hub` (what a snapshot holds).
"""
