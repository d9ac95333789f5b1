"""The OpenAPI 3.1 description of a node's public HTTP API, served at GET /openapi.json.

Every node serves the same document (no token needed: it holds no data and no secret). It
describes the public routes only; the node-to-node routes under /v1/internal/ are not part of the
contract. tests/test_openapi.py validates the document, checks that every public route a node
registers is described here, and fuzzes a real cluster against it (schemathesis).
"""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

from idunno import __version__
from idunno.control.coordinator import MAX_WEIGHT
from idunno.control.scheduler import MAX_BATCH
from idunno.inference.catalog import MAX_NAME
from idunno.node.grep import MAX_PATTERN
from idunno.store.names import MAX_NAME_BYTES

PATH: Final = "/openapi.json"
INTERNAL_PREFIX: Final = "/v1/internal/"

# A store file name: relative, slash-separated segments, none empty, "." or ".."; no backslash,
# no control character. (The server also caps it at 1024 bytes of UTF-8.)
_SEG_CHAR = r"[^/\\\x00-\x1f\x7f]"
_SEGMENT = rf"(?:\.{{3,}}|\.*[^./\\\x00-\x1f\x7f]{_SEG_CHAR}*)"
FILE_NAME_PATTERN: Final = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"
# Models, datasets and jobs (a job's id, j + 8 hex digits, fits the same pattern).
CATALOG_NAME_PATTERN: Final = rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}$"

JSON: Final = "application/json"
OCTETS: Final = "application/octet-stream"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{description}"}


def _op(
    summary: str,
    tag: str,
    op_id: str,
    ok: dict[str, Any],
    errors: tuple[str, ...] = (),
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    description: str | None = None,
    public: bool = False,
    query_token: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "operationId": op_id, "tags": [tag]}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    op["responses"] = {**ok, **{code: _error(code) for code in errors}}
    if public:
        op["security"] = []
        return op
    if query_token:  # a browser's EventSource cannot send headers
        op["security"] = [{"bearerAuth": []}, {"accessToken": []}]
    op["responses"]["401"] = _error("401")
    return op


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> Any:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


_INT = {"type": "integer"}
_NUM = {"type": "number"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_NULLABLE_NUM = {"type": ["number", "null"]}
_NULLABLE_STR = {"type": ["string", "null"]}
_STRINGS = {"type": "array", "items": _STR}
_COUNTS = {"type": "object", "additionalProperties": _INT}
_WHOLE = {"type": "integer", "minimum": 0}
_FLAG = {"type": "string", "enum": ["0", "1"]}

JOB_PARAM: Final = {
    "name": "job",
    "in": "path",
    "required": True,
    "description": "The job's id (j + 8 hex digits) or its name.",
    "schema": {"type": "string", "pattern": CATALOG_NAME_PATTERN},
}
FILE_PARAM: Final = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": (
        "The store file name, slashes included (they may be sent as / or %2F; every other "
        f"reserved character percent-encoded). At most {MAX_NAME_BYTES} bytes of UTF-8."
    ),
    "schema": {"type": "string", "pattern": FILE_NAME_PATTERN, "maxLength": MAX_NAME_BYTES},
}

SCHEMAS: Final[dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "One line: the cause and fix."}},
    },
    "CatalogName": {
        "type": "string",
        "pattern": CATALOG_NAME_PATTERN,
        "description": f"1..{MAX_NAME} ASCII letters, digits, '-', '_' or '.', not first.",
    },
    "FileName": {"type": "string", "pattern": FILE_NAME_PATTERN, "maxLength": MAX_NAME_BYTES},
    "Member": _obj(
        {
            "id": _STR,
            "address": {"type": "string", "description": "HOST:PORT (UDP and TCP)"},
            "status": {"type": "string", "enum": ["alive", "suspect", "failed", "left"]},
            "incarnation": _WHOLE,
            "changed_at": {"type": "number", "description": "unix time of the last change"},
            "role": {"type": "string", "enum": ["coordinator", "standby", "worker"]},
        }
    ),
    "Members": _obj(
        {"self": _STR, "members": {"type": "array", "items": _ref("Member")}},
    ),
    "Self": {
        "allOf": [
            _ref("Member"),
            _obj(
                {
                    "pid": _INT,
                    "data_dir": _STR,
                    "preset": _STR,
                    "started_at": _NUM,
                    "live_members": _WHOLE,
                    "awareness": _WHOLE,
                    "traffic": _COUNTS,
                    "dropped": _COUNTS,
                }
            ),
        ]
    },
    "Leaving": _obj({"leaving": _STR}),
    "GrepResult": _obj(
        {
            "node": _STR,
            "count": {"type": "integer", "minimum": 0, "description": "matching lines in all"},
            "lines": {
                "type": "array",
                "items": _STR,
                "description": "the first `limit` matching lines",
            },
            "truncated": _BOOL,
        }
    ),
    "Version": _obj(
        {
            "version": {"type": "integer", "minimum": 1},
            "size": _WHOLE,
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "created_at": _NUM,
        }
    ),
    "PutResult": {
        "allOf": [
            _ref("Version"),
            _obj({"name": _ref("FileName"), "replicas": _STRINGS}),
        ]
    },
    "Deleted": _obj({"name": _ref("FileName"), "deleted_version": {"type": "integer"}}),
    "FileList": _obj(
        {
            "files": {
                "type": "array",
                "items": _obj(
                    {
                        "name": _ref("FileName"),
                        "version": {"type": "integer", "minimum": 1},
                        "size": _WHOLE,
                        "created_at": _NUM,
                        "replicas": _WHOLE,
                    }
                ),
            }
        }
    ),
    "Holders": _obj(
        {
            "name": _ref("FileName"),
            "holders": {
                "type": "array",
                "items": _obj(
                    {
                        "node": _STR,
                        "versions": {"type": "array", "items": _INT},
                        "tombstone": {"type": ["integer", "null"]},
                    }
                ),
            },
        }
    ),
    "StoreInfo": _obj(
        {
            "node": _STR,
            "files": {
                "type": "array",
                "items": _obj(
                    {
                        "name": _ref("FileName"),
                        "versions": {"type": "array", "items": _INT},
                        "size": _WHOLE,
                        "tombstone": {"type": ["integer", "null"]},
                    }
                ),
            },
            "bytes": _WHOLE,
            "last_repair": {
                "type": "object",
                "description": "the last repair round ({} before the first)",
                "properties": {
                    "took_s": _NUM,
                    "pushed": _WHOLE,
                    "dropped": _WHOLE,
                    "incomplete": _WHOLE,
                    "at": _NUM,
                },
            },
        }
    ),
    "Versions": _obj(
        {"name": _ref("FileName"), "versions": {"type": "array", "items": _ref("Version")}}
    ),
    "JobRequest": _obj(
        {
            "model": _ref("CatalogName"),
            "dataset": _ref("CatalogName"),
            "batch_size": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH},
        },
        {
            "name": {
                "description": "default: MODEL-K, the first K free",
                "anyOf": [_ref("CatalogName"), {"type": "null"}],
            },
            "weight": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "maximum": MAX_WEIGHT,
                "description": "share of the workers relative to other jobs (default 1)",
            },
        },
    ),
    "Job": _obj(
        {
            "id": _STR,
            "name": _ref("CatalogName"),
            "model": _ref("CatalogName"),
            "dataset": _ref("CatalogName"),
            "batch_size": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH},
            "weight": _NUM,
            "status": {"type": "string", "enum": ["running", "done", "cancelled"]},
            "total": _WHOLE,
            "done": _WHOLE,
            "errors": _WHOLE,
            "submitted_at": _NUM,
            "first_result_at": _NULLABLE_NUM,
            "finished_at": _NULLABLE_NUM,
            "rate": {"type": "number", "description": "queries/s over the last 10 s"},
            "workers": {"type": "array", "items": _STR},
        }
    ),
    "JobReply": _obj({"job": _ref("Job")}),
    "JobList": _obj(
        {
            "jobs": {"type": "array", "items": _ref("Job")},
            "coordinator": _STR,
            "epoch": _INT,
        }
    ),
    "BatchSizeRequest": _obj(
        {"batch_size": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH}}
    ),
    "BatchSizeReply": _obj(
        {"job": _ref("Job"), "previous": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH}}
    ),
    "Stats": _obj(
        {
            "id": _STR,
            "name": _STR,
            "count": _WHOLE,
            **{
                k: _NULLABLE_NUM
                for k in ("mean_ms", "sd_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms")
            },
        }
    ),
    "Result": _obj(
        {
            "query": _STR,
            "index": _WHOLE,
            "class_ids": {"type": "array", "items": _INT},
            "scores": {"type": "array", "items": _NUM},
            "labels": {"type": ["array", "null"], "items": _STR},
            "output": {"description": "the raw output row of a model that is not a classifier"},
            "error": _NULLABLE_STR,
            "worker": _STR,
            "processing_ms": _NUM,
            "epoch": _INT,
            "batch": _INT,
            "accepted_at": _NUM,
        }
    ),
    "Results": _obj(
        {
            "id": _STR,
            "name": _STR,
            "total": _WHOLE,
            "answered": _WHOLE,
            "results": {"type": "array", "items": _ref("Result")},
        }
    ),
    "Rates": _obj(
        {
            "window_s": _NUM,
            "jobs": {
                "type": "array",
                "items": _obj(
                    {
                        "id": _STR,
                        "name": _STR,
                        "rate": _NUM,
                        "done": _WHOLE,
                        "total": _WHOLE,
                        "status": {"type": "string", "enum": ["running", "done", "cancelled"]},
                    }
                ),
            },
        }
    ),
    "Assignment": _obj(
        {
            "epoch": _INT,
            "coordinator": _STR,
            "standby": _NULLABLE_STR,
            "workers": {
                "type": "object",
                "description": "node -> ids of the jobs it holds batches of",
                "additionalProperties": _STRINGS,
            },
            "jobs": {
                "type": "array",
                "items": _obj(
                    {
                        "id": _STR,
                        "name": _STR,
                        "workers": _STRINGS,
                        "share": {"type": "number", "minimum": 0, "maximum": 1},
                    }
                ),
            },
        }
    ),
    "TrainRequest": {
        "type": "object",
        "properties": {
            "models": {
                "type": "array",
                "items": _ref("CatalogName"),
                "description": "the models to train (missing or empty: every model)",
            }
        },
    },
    "TrainReply": _obj(
        {
            "models": {
                "type": "array",
                "items": _obj(
                    {
                        "model": _STR,
                        "version": _INT,
                        "workers": {
                            "type": "object",
                            "description": "node -> {cost_per_query_s, ...} or {error}",
                            "additionalProperties": {"type": "object"},
                        },
                    }
                ),
            }
        }
    ),
    "Control": _obj(
        {
            "epoch": _WHOLE,
            "coordinator": _NULLABLE_STR,
            "standby": _NULLABLE_STR,
            "role": {"type": "string", "enum": ["coordinator", "standby", "worker"]},
            "fence": _WHOLE,
        }
    ),
}

_ERRORS = {
    "400": "Bad input (the message says which and why).",
    "401": "No bearer token, or a malformed, expired or wrong one (the message says which).",
    "404": "No such file, job, model, dataset or query.",
    "409": "A name is taken, or a conflicting or corrupt replica.",
    "413": "The JSON body is larger than 4 MiB.",
    "503": "Not possible right now (too few live nodes, no coordinator reachable yet): retry.",
    "507": "The node's disk is full.",
}
RESPONSES: Final[dict[str, Any]] = {
    code: _json_body(_ref("Error"), text) for code, text in _ERRORS.items()
}
# A request the HTTP layer cannot parse (a request line or header over 8190 bytes, bad framing)
# is refused by aiohttp itself, before any route: 400 with a plain-text reason.
RESPONSES["400"]["content"]["text/plain"] = {"schema": _STR}


def _ok(schema: str, status: str = "200", description: str = "OK") -> dict[str, Any]:
    return {status: _json_body(_ref(schema), description)}


_JOB_ERRORS = ("400", "404", "503")
_FORWARDED = (
    "Any node answers: one that is not the coordinator forwards the request to it and relays "
    "the answer; 503 while no coordinator is reachable (an election or failover is going on)."
)

PATHS: Final[dict[str, Any]] = {
    PATH: {
        "get": _op(
            "This document",
            "meta",
            "getOpenApi",
            {"200": _json_body({"type": "object"}, "The OpenAPI 3.1 document")},
            public=True,
        )
    },
    "/metrics": {
        "get": _op(
            "Prometheus metrics of this node",
            "meta",
            "getMetrics",
            {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": _STR}},
                }
            },
        )
    },
    "/": {
        "get": _op(
            "The dashboard page (it asks for a token, or reads it from the link)",
            "dashboard",
            "getDashboard",
            {"200": {"description": "HTML", "content": {"text/html": {"schema": _STR}}}},
            public=True,
        )
    },
    "/dashboard/": {
        "get": _op(
            "The dashboard page (same as /)",
            "dashboard",
            "getDashboardPage",
            {"200": {"description": "HTML", "content": {"text/html": {"schema": _STR}}}},
            public=True,
        )
    },
    "/dashboard/{name}": {
        "get": _op(
            "A static file of the dashboard (app.js, style.css, icon.svg)",
            "dashboard",
            "getDashboardFile",
            {
                "200": {
                    "description": "The file",
                    "content": {
                        media: {"schema": _STR}
                        for media in ("text/javascript", "text/css", "image/svg+xml")
                    },
                },
                "304": {"description": "Not modified (If-None-Match matched its ETag)"},
            },
            ("404",),
            parameters=[
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[^/]+$"},
                }
            ],
            public=True,
        )
    },
    "/v1/dashboard/snapshot": {
        "get": _op(
            "One dashboard snapshot of the cluster as this node sees it",
            "dashboard",
            "getDashboardSnapshot",
            {"200": _json_body({"type": "object"}, "The snapshot")},
            query_token=True,
        )
    },
    "/v1/dashboard/stream": {
        "get": _op(
            "Server-sent events: `history`, then a `snapshot` about every second",
            "dashboard",
            "streamDashboard",
            {
                "200": {
                    "description": (
                        "An endless text/event-stream; it ends with an `expired` event when the "
                        "token expires and a `closing` event when the node stops."
                    ),
                    "content": {"text/event-stream": {"schema": _STR}},
                }
            },
            query_token=True,
        )
    },
    "/v1/dashboard/coordinator": {
        "get": _op(
            "The coordinator's jobs, assignment and events (for other nodes' dashboards)",
            "dashboard",
            "getDashboardCoordinator",
            {
                "200": _json_body(
                    _obj(
                        {
                            "epoch": _INT,
                            "coordinator": _STR,
                            "standby": _NULLABLE_STR,
                            "jobs": {"type": "array", "items": {"type": "object"}},
                            "workers": {
                                "type": "object",
                                "additionalProperties": _STRINGS,
                            },
                            "events": {"type": "array", "items": {"type": "object"}},
                        }
                    ),
                    "The coordinator's view",
                )
            },
            ("503",),
            description="503 on a node that does not lead.",
            query_token=True,
        )
    },
    "/v1/members": {
        "get": _op("This node's membership list", "membership", "getMembers", _ok("Members"))
    },
    "/v1/self": {"get": _op("This node", "membership", "getSelf", _ok("Self"))},
    "/v1/leave": {
        "post": _op(
            "Make this node leave the cluster and stop",
            "membership",
            "postLeave",
            _ok("Leaving", "202", "The node leaves (others mark it `left`) and exits."),
        )
    },
    "/v1/logs/grep": {
        "get": _op(
            "Search this node's JSON log (DATA_DIR/node.jsonl)",
            "logs",
            "grepLogs",
            _ok("GrepResult"),
            ("400",),
            parameters=[
                _query(
                    "pattern",
                    {"type": "string", "minLength": 1, "maxLength": MAX_PATTERN},
                    "A fixed string, or a Python regular expression with regex=1.",
                    required=True,
                ),
                _query("regex", _FLAG, "1: the pattern is a regular expression."),
                _query("ignore_case", _FLAG, "1: ignore case."),
                _query(
                    "limit",
                    _WHOLE,
                    "Most lines to return (default 1000, capped at 100000); "
                    "`count` still counts them all.",
                ),
            ],
        )
    },
    "/v1/files/{name}": {
        "parameters": [FILE_PARAM],
        "put": _op(
            "Store a new version of a file",
            "store",
            "putFile",
            _ok("PutResult", description="Stored on its replicas"),
            ("400", "409", "503", "507"),
            body={
                "required": True,
                "description": "The file's bytes (streamed; no size limit).",
                "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
            },
        ),
        "get": _op(
            "Read a file (its newest version, or ?version=)",
            "store",
            "getFile",
            {
                "200": {
                    "description": "The file's bytes",
                    "headers": {
                        "X-Idunno-Version": {"required": True, "schema": {"type": "integer"}},
                        "X-Idunno-Sha256": {"required": True, "schema": _STR},
                        "X-Idunno-Created": {
                            "required": True,
                            "description": "unix time the version was written",
                            "schema": _STR,
                        },
                    },
                    "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
                },
                "307": {
                    "description": (
                        "With X-Idunno-Redirect: ok, a node that holds no copy redirects to one "
                        "that does."
                    ),
                    "headers": {"Location": {"required": True, "schema": _STR}},
                },
            },
            ("400", "404", "409", "503"),
            parameters=[
                _query(
                    "version",
                    {"type": "integer", "minimum": 1},
                    "The version to read (default: the newest).",
                ),
                {
                    "name": "X-Idunno-Redirect",
                    "in": "header",
                    "required": False,
                    "description": "ok: redirect to a holder instead of relaying the bytes.",
                    "schema": {"type": "string", "enum": ["ok"]},
                },
            ],
        ),
        "delete": _op(
            "Delete every version of a file",
            "store",
            "deleteFile",
            _ok("Deleted"),
            ("400", "404", "503"),
        ),
    },
    "/v1/ls": {
        "get": _op(
            "Every file in the cluster, or where one file is held",
            "store",
            "listFiles",
            {
                "200": _json_body(
                    {"anyOf": [_ref("FileList"), _ref("Holders")]},
                    "Without ?name=: every file; with it: the nodes holding it.",
                )
            },
            ("400", "404", "503"),
            parameters=[_query("name", _ref("FileName"), "Show the nodes holding this file.")],
        )
    },
    "/v1/store": {"get": _op("The files this node holds", "store", "getStore", _ok("StoreInfo"))},
    "/v1/versions": {
        "get": _op(
            "Every stored version of a file, newest first",
            "store",
            "getVersions",
            _ok("Versions"),
            ("400", "404", "503"),
            parameters=[_query("name", _ref("FileName"), "The file.", required=True)],
        )
    },
    "/v1/jobs": {
        "post": _op(
            "Submit an inference job",
            "jobs",
            "submitJob",
            _ok("JobReply", "201", "The job runs"),
            ("400", "404", "409", "413", "503"),
            body=_json_body(_ref("JobRequest"), "What to run"),
            description=_FORWARDED,
        ),
        "get": _op(
            "Every job",
            "jobs",
            "listJobs",
            _ok("JobList"),
            ("503",),
            description=_FORWARDED,
        ),
    },
    "/v1/jobs/{job}": {
        "parameters": [JOB_PARAM],
        "get": _op("One job", "jobs", "getJob", _ok("JobReply"), _JOB_ERRORS),
    },
    "/v1/jobs/{job}/cancel": {
        "parameters": [JOB_PARAM],
        "post": _op("Cancel a job", "jobs", "cancelJob", _ok("JobReply"), _JOB_ERRORS),
    },
    "/v1/jobs/{job}/batch-size": {
        "parameters": [JOB_PARAM],
        "post": _op(
            "Change a job's batch size (C3)",
            "jobs",
            "setBatchSize",
            _ok("BatchSizeReply"),
            (*_JOB_ERRORS, "413"),
            body=_json_body(_ref("BatchSizeRequest"), "The new batch size"),
        ),
    },
    "/v1/jobs/{job}/stats": {
        "parameters": [JOB_PARAM],
        "get": _op(
            "Per-query processing time statistics (C2; null fields while there is no result)",
            "jobs",
            "getJobStats",
            _ok("Stats"),
            _JOB_ERRORS,
        ),
    },
    "/v1/jobs/{job}/results": {
        "parameters": [JOB_PARAM],
        "get": _op(
            "A job's results in dataset order (C4)",
            "jobs",
            "getJobResults",
            _ok("Results"),
            _JOB_ERRORS,
            parameters=[
                _query("query", _STR, "Only this query (item id)."),
                _query("offset", _WHOLE, "Skip this many answered queries."),
                _query("limit", _WHOLE, "Return at most this many (capped at 100000)."),
            ],
        ),
    },
    "/v1/rates": {
        "get": _op(
            "Each job's query rate over the last 10 s (C1)",
            "jobs",
            "getRates",
            _ok("Rates"),
            _JOB_ERRORS,
            parameters=[
                _query(
                    "job",
                    {"type": "string", "pattern": CATALOG_NAME_PATTERN},
                    "Only this job (id or name).",
                )
            ],
            description=_FORWARDED,
        )
    },
    "/v1/assignment": {
        "get": _op(
            "Which workers run which jobs, and each job's share (C5)",
            "jobs",
            "getAssignment",
            _ok("Assignment"),
            ("503",),
            description=_FORWARDED,
        )
    },
    "/v1/train": {
        "post": _op(
            "Load models on every worker and measure their cost per query",
            "jobs",
            "train",
            _ok("TrainReply"),
            ("400", "404", "413", "503"),
            body={
                "required": False,
                "description": "Which models (no body: every model)",
                "content": {JSON: {"schema": _ref("TrainRequest")}},
            },
            description=_FORWARDED,
        )
    },
    "/v1/control": {
        "get": _op(
            "The current reign as this node sees it",
            "jobs",
            "getControl",
            _ok("Control"),
        )
    },
}

DOCUMENT: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "IDUNNO node API",
        "version": __version__,
        "description": (
            "Every node of an IDUNNO cluster serves this API on its TCP port (the same number as "
            "its UDP failure-detector port). Every route but this document needs "
            "`Authorization: Bearer idn1.<expiry>.<hmac>`, a token minted from the cluster key "
            "(the CLI mints one per call; `idunno dashboard` prints one). Errors are JSON "
            "`{error}` with one line naming the cause and the fix. Routes under /v1/internal/ "
            "are node-to-node and not part of this contract."
        ),
        "license": {"name": "MIT", "identifier": "MIT"},
    },
    "tags": [
        {"name": "meta"},
        {"name": "membership", "description": "The failure detector's view"},
        {"name": "logs"},
        {"name": "store", "description": "The replicated, versioned file store (SDFS)"},
        {"name": "jobs", "description": "Inference jobs (the coordinator answers)"},
        {"name": "dashboard", "description": "The web dashboard (`idunno dashboard`)"},
    ],
    "security": [{"bearerAuth": []}],
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "accessToken": {
                "type": "apiKey",
                "in": "query",
                "name": "access_token",
                "description": "The same token as ?access_token= (GET /v1/dashboard/* only).",
            },
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "idn1.<expiry unix seconds>.<hex HMAC-SHA256 of the cluster key>",
                "description": "Mint with idunno.transport.tokens.mint(key) or `idunno dashboard`.",
            },
        },
        "schemas": SCHEMAS,
        "responses": RESPONSES,
    },
}

_BODY: Final = json.dumps(DOCUMENT, indent=1, sort_keys=False).encode()


async def serve(request: web.Request) -> web.Response:
    """GET /openapi.json (public: no token)."""
    return web.Response(body=_BODY, content_type="application/json")
