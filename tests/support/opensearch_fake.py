"""A fake OpenSearch for tests: real HTTP on 127.0.0.1, what opensearch-py's calls need.

Implements ``GET /`` (cluster info), ``/<pattern>/_refresh``, ``/<pattern>/_search`` (all
documents), ``DELETE /<pattern>``, ``HEAD``/``PUT``/``GET /_index_template/<name>``,
``PUT``/``GET /_plugins/_ism/policies/<id>`` (with ``if_seq_no``/``if_primary_term``),
``POST /_bulk`` with ``create``/``index`` semantics (201, or 409
``version_conflict_engine_exception`` when the id exists in that index; ``errors: true`` when
any item failed) and ``GET /<index>/_doc/<id>``. Documents are stored by ``(index, id)``.

Faults: :meth:`FakeOpenSearch.down` closes the listening socket and every open connection
(connection refused) and :meth:`FakeOpenSearch.up` listens again on the same port;
:meth:`fail_next` answers the next N matching requests with a status (429, 500, ...);
:meth:`fail_items` fails the next N bulk items with an item-level status; :meth:`reject` makes
matching documents fail with a 400 ``mapper_parsing_exception``; ``delay`` slows every bulk.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Document = dict[str, Any]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FakeOpenSearch


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner.track(self.connection, add=False)

    def do_GET(self) -> None:
        self.server.owner.handle(self)

    def do_PUT(self) -> None:
        self.server.owner.handle(self)

    def do_POST(self) -> None:
        self.server.owner.handle(self)

    def do_HEAD(self) -> None:
        self.server.owner.handle(self)

    def do_DELETE(self) -> None:
        self.server.owner.handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class FakeOpenSearch:
    """The fake server. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.port = 0
        self.documents: dict[tuple[str, str], Document] = {}
        self.templates: dict[str, Document] = {}
        self.policies: dict[str, Document] = {}
        self.policy_seq: dict[str, int] = {}
        #: How many times each id was created (must never exceed 1).
        self.created: Counter[str] = Counter()
        #: 409 answers per id (retries of already stored documents).
        self.conflicts: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        #: Authorization header of every request (None when absent).
        self.authorizations: list[str | None] = []
        self.bulk_requests = 0
        self.delay = 0.0
        self._lock = threading.Lock()
        self._fail: list[tuple[int, int, str]] = []  # (remaining, status, path prefix)
        self._fail_items: list[tuple[int, int]] = []
        self._reject: Callable[[Document], bool] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeOpenSearch:
        """Listen (on a free port the first time, on the same port afterwards)."""
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.owner = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    down = stop

    def up(self) -> None:
        """Listen again on the same port."""
        deadline = time.monotonic() + 5
        while True:
            try:
                self.start()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __enter__(self) -> FakeOpenSearch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    # -- faults --------------------------------------------------------------------------------

    def fail_next(self, count: int, status: int, path_prefix: str = "/_bulk") -> None:
        """Answer the next ``count`` requests under ``path_prefix`` with ``status``."""
        with self._lock:
            self._fail.append((count, status, path_prefix))

    def fail_items(self, count: int, status: int) -> None:
        """Fail the next ``count`` bulk items with an item-level ``status`` (429, 503, ...)."""
        with self._lock:
            self._fail_items.append((count, status))

    def reject(self, predicate: Callable[[Document], bool] | None) -> None:
        """Reject documents matching ``predicate`` with a 400 mapper_parsing_exception."""
        self._reject = predicate

    # -- queries -------------------------------------------------------------------------------

    def ids(self) -> set[str]:
        """Ids of every stored document."""
        with self._lock:
            return {doc_id for _index, doc_id in self.documents}

    # -- request handling ----------------------------------------------------------------------

    def handle(self, request: _Handler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        parts = urlsplit(request.path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        method = request.command
        with self._lock:
            self.requests.append((method, path))
            self.authorizations.append(request.headers.get("Authorization"))
            injected = self._injected_status(path)
        if injected is not None:
            error = {"type": "injected", "reason": f"injected {injected}"}
            if injected == 429:
                error = {"type": "es_rejected_execution_exception", "reason": "queue full"}
            self._reply(request, injected, {"error": error, "status": injected})
            return
        status, payload = self._route(method, path, query, body)
        self._reply(request, status, payload)

    def _injected_status(self, path: str) -> int | None:
        for i, (remaining, status, prefix) in enumerate(self._fail):
            if path.startswith(prefix):
                if remaining <= 1:
                    del self._fail[i]
                else:
                    self._fail[i] = (remaining - 1, status, prefix)
                return status
        return None

    def _reply(self, request: _Handler, status: int, payload: Any) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json; charset=UTF-8")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        segments = [s for s in path.split("/") if s]
        if method in ("GET", "HEAD") and not segments:
            return 200, {
                "name": "fake-node",
                "cluster_name": "fake",
                "cluster_uuid": "fake-uuid",
                "version": {
                    "distribution": "opensearch",
                    "number": "2.11.0",
                    "lucene_version": "9.7.0",
                    "minimum_wire_compatibility_version": "7.10.0",
                    "minimum_index_compatibility_version": "7.0.0",
                },
                "tagline": "The OpenSearch Project: https://opensearch.org/",
            }
        if segments[:1] == ["_bulk"] and method in ("POST", "PUT"):
            return self._bulk(body)
        if segments[:1] == ["_index_template"] and len(segments) == 2:
            return self._template(method, segments[1], body)
        if segments[:3] == ["_plugins", "_ism", "policies"] and len(segments) == 4:
            return self._policy(method, segments[3], query, body)
        if len(segments) == 2 and segments[1] == "_refresh":
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        if len(segments) == 2 and segments[1] == "_search":
            return self._search(segments[0])
        if len(segments) == 1 and method == "DELETE" and not segments[0].startswith("_"):
            with self._lock:
                for key in [k for k in self.documents if fnmatch(k[0], segments[0])]:
                    del self.documents[key]
            return 200, {"acknowledged": True}
        if len(segments) == 3 and segments[1] == "_doc" and method == "GET":
            with self._lock:
                doc = self.documents.get((segments[0], segments[2]))
            if doc is None:
                return 404, {"_index": segments[0], "_id": segments[2], "found": False}
            return 200, {"_index": segments[0], "_id": segments[2], "found": True, "_source": doc}
        return 404, {
            "error": {"type": "not_found", "reason": f"no route {method} {path}"},
            "status": 404,
        }

    def _search(self, pattern: str) -> tuple[int, Any]:
        with self._lock:
            hits = [
                {"_index": index, "_id": doc_id, "_score": 1.0, "_source": doc}
                for (index, doc_id), doc in self.documents.items()
                if fnmatch(index, pattern)
            ]
        return 200, {
            "took": 1,
            "timed_out": False,
            "hits": {"total": {"value": len(hits), "relation": "eq"}, "hits": hits},
        }

    def _template(self, method: str, name: str, body: bytes) -> tuple[int, Any]:
        with self._lock:
            if method == "DELETE" and name in self.templates:
                del self.templates[name]
                return 200, {"acknowledged": True}
            if method == "HEAD":
                return (200 if name in self.templates else 404), None
            if method == "PUT":
                self.templates[name] = json.loads(body)
                return 200, {"acknowledged": True}
            if method == "GET" and name in self.templates:
                return 200, {
                    "index_templates": [{"name": name, "index_template": self.templates[name]}]
                }
        return 404, {"error": {"type": "resource_not_found_exception"}, "status": 404}

    def _policy(
        self, method: str, policy_id: str, query: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        with self._lock:
            exists = policy_id in self.policies
            if method == "DELETE" and exists:
                del self.policies[policy_id]
                return 200, {"_id": policy_id, "result": "deleted"}
            if method == "GET":
                if not exists:
                    return 404, {
                        "error": {"type": "status_exception", "reason": "Policy not found"},
                        "status": 404,
                    }
                return 200, {
                    "_id": policy_id,
                    "_version": self.policy_seq[policy_id] + 1,
                    "_seq_no": self.policy_seq[policy_id],
                    "_primary_term": 1,
                    "policy": self.policies[policy_id]["policy"],
                }
            if method == "PUT":
                if exists:
                    if query.get("if_seq_no") != str(self.policy_seq[policy_id]):
                        return 409, {
                            "error": {
                                "type": "version_conflict_engine_exception",
                                "reason": f"[{policy_id}]: version conflict, document already "
                                "exists (current version [1])",
                            },
                            "status": 409,
                        }
                    self.policy_seq[policy_id] += 1
                else:
                    self.policy_seq[policy_id] = 0
                self.policies[policy_id] = json.loads(body)
                return (200 if exists else 201), {
                    "_id": policy_id,
                    "_seq_no": self.policy_seq[policy_id],
                    "_primary_term": 1,
                    "policy": self.policies[policy_id],
                }
        return 405, {"error": "method not allowed", "status": 405}

    def _bulk(self, body: bytes) -> tuple[int, Any]:
        if self.delay:
            time.sleep(self.delay)
        lines = [line for line in body.split(b"\n") if line.strip()]
        items: list[dict[str, Any]] = []
        i = 0
        with self._lock:
            self.bulk_requests += 1
            while i < len(lines):
                action = json.loads(lines[i])
                op, meta = next(iter(action.items()))
                source = json.loads(lines[i + 1]) if op != "delete" else None
                i += 2 if op != "delete" else 1
                items.append({op: self._item(op, meta["_index"], str(meta["_id"]), source)})
        errors = any(not 200 <= next(iter(item.values()))["status"] < 300 for item in items)
        return 200, {"took": 1, "errors": errors, "items": items}

    def _item(self, op: str, index: str, doc_id: str, source: Document | None) -> Document:
        base: Document = {"_index": index, "_id": doc_id}
        for n, (remaining, status) in enumerate(self._fail_items):
            if remaining <= 1:
                del self._fail_items[n]
            else:
                self._fail_items[n] = (remaining - 1, status)
            kind = "es_rejected_execution_exception" if status == 429 else "injected_exception"
            return {**base, "status": status, "error": {"type": kind, "reason": "injected"}}
        if source is not None and self._reject is not None and self._reject(source):
            return {
                **base,
                "status": 400,
                "error": {
                    "type": "mapper_parsing_exception",
                    "reason": "failed to parse field [details] of type [object]",
                    "caused_by": {"type": "illegal_argument_exception", "reason": "injected"},
                },
            }
        key = (index, doc_id)
        if op == "create" and key in self.documents:
            self.conflicts[doc_id] += 1
            return {
                **base,
                "status": 409,
                "error": {
                    "type": "version_conflict_engine_exception",
                    "reason": f"[{doc_id}]: version conflict, document already exists "
                    "(current version [1])",
                    "index": index,
                    "shard": "0",
                },
            }
        created = key not in self.documents
        if op in ("create", "index"):
            assert source is not None
            self.documents[key] = source
            if created:
                self.created[doc_id] += 1
        return {
            **base,
            "_version": 1,
            "result": "created" if created else "updated",
            "_shards": {"total": 1, "successful": 1, "failed": 0},
            "_seq_no": len(self.documents),
            "_primary_term": 1,
            "status": 201 if created else 200,
        }
