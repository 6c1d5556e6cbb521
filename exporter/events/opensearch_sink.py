"""The OpenSearch sink: index template, ISM retention policy, credentials and bulk writes.

:class:`OpenSearchSink` writes with opensearch-py's ``helpers.streaming_bulk`` (one chunk
per batch, ``raise_on_error=False, raise_on_exception=False, max_retries=0``). It is chosen
over ``bulk`` because it yields one result per document, in order, which is exactly what
acknowledging, dead-lettering or retrying each event needs; ``parallel_bulk`` would add
threads and reorder results for no gain at the exporter's event rate; and the helper's own
429 retry is left off because it sleeps without jitter, blocks ``stop()`` and does not cover
5xx or connection errors: the shipper retries instead. Every document is a ``create`` with
the event id as ``_id``, so a 409 means "already there" and counts as delivered.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from exporter.config import OpenSearch
from exporter.events.sinks import ItemResult, Outcome, SinkError, redact

log = logging.getLogger("exporter.events.shipper")  # the shipper and its sinks log as one

#: The date at the start of a canonical event document (``{"@timestamp":"2024-05-01T...``).
_LEADING_DAY = re.compile(r'\{"@timestamp":"(\d{4})-(\d{2})-(\d{2})T')


def timevalue(seconds: float) -> str:
    """An OpenSearch time value for ``seconds``: ``90d``, ``12h``, ``30m`` or ``45s``."""
    whole = max(1, round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def index_template(prefix: str) -> dict[str, Any]:
    """The index template installed at start: explicit mappings for every event field.

    ``versions.*`` holds any version python-tuf accepts (any positive integer, past 2**64
    too), so it is a ``keyword`` (the exact decimal digits; terms and exact matches) with a
    ``versions.<name>.number`` ``unsigned_long`` sub-field for ranges and sorting up to
    2**64 - 1 (``ignore_malformed``: a larger version keeps its document and its keyword,
    it only has no number). A ``long`` would reject every event carrying a version past
    2**63 - 1. ``unsigned_long`` needs OpenSearch 2.8 or later.
    """
    keyword = {"type": "keyword"}
    date = {"type": "date", "format": "strict_date_optional_time||epoch_millis"}
    return {
        "index_patterns": [f"{prefix}-*"],
        "priority": 100,
        "template": {
            "settings": {"index": {"number_of_shards": 1}},
            "mappings": {
                "dynamic": False,
                "dynamic_templates": [
                    {
                        "versions": {
                            "path_match": "versions.*",
                            "match_mapping_type": "*",
                            "mapping": {
                                "type": "keyword",
                                "fields": {"number": {"type": "unsigned_long",
                                                      "ignore_malformed": True}},
                            },
                        }
                    },
                    {
                        "durations_double": {
                            "path_match": "durations.*",
                            "match_mapping_type": "double",
                            "mapping": {"type": "float"},
                        }
                    },
                    {
                        "durations_long": {
                            "path_match": "durations.*",
                            "match_mapping_type": "long",
                            "mapping": {"type": "float"},
                        }
                    },
                    {
                        "hashes": {
                            "path_match": "hashes.*",
                            "match_mapping_type": "string",
                            "mapping": {"type": "keyword"},
                        }
                    },
                ],
                "properties": {
                    "event_id": keyword,
                    "schema_version": {"type": "integer"},
                    "kind": keyword,
                    "@timestamp": date,
                    "time": date,
                    "repository": keyword,
                    "endpoint": keyword,
                    "role": keyword,
                    "reason": keyword,
                    "keyids": keyword,
                    "message": {"type": "text"},
                    "versions": {"type": "object", "dynamic": True},
                    "durations": {"type": "object", "dynamic": True},
                    "hashes": {"type": "object", "dynamic": True},
                    "details": {"type": "object", "enabled": False},
                },
            },
        },
    }


def retention_policy(prefix: str, retention: float) -> dict[str, Any]:
    """The ISM policy that deletes the event indices ``retention`` seconds after creation."""
    return {
        "policy": {
            "description": f"tuf-exporter: delete {prefix}-* indices after {timevalue(retention)}",
            "default_state": "hot",
            "states": [
                {
                    "name": "hot",
                    "actions": [],
                    "transitions": [
                        {
                            "state_name": "delete",
                            "conditions": {"min_index_age": timevalue(retention)},
                        }
                    ],
                },
                {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
            ],
            "ism_template": [{"index_patterns": [f"{prefix}-*"], "priority": 100}],
        }
    }


def read_credentials(
    settings: OpenSearch, environ: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """``(username, password)`` from the environment or the password file, or None.

    Errors name the variable or file, never a value.
    """
    env = os.environ if environ is None else environ
    if settings.username_env is None:
        return None
    username = env.get(settings.username_env)
    if not username:
        raise ValueError(f"environment variable {settings.username_env} (username) is not set")
    if settings.password_env is not None:
        password = env.get(settings.password_env)
        if not password:
            raise ValueError(f"environment variable {settings.password_env} (password) is not set")
    elif settings.password_file is not None:
        try:
            password = settings.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(
                f"cannot read the password file {settings.password_file}: {exc.strerror}"
            ) from None
    else:
        raise ValueError("opensearch.username_env needs password_env or password_file")
    return username, password


def _status(info: Mapping[str, Any]) -> int | None:
    status = info.get("status")
    return status if isinstance(status, int) else None


class OpenSearchSink:
    """Bulk-creates documents in ``<prefix>-YYYY.MM.DD`` (UTC date of the event's time).

    In: the ``opensearch`` settings (hosts, index prefix, retention in seconds, TLS, the
    credentials read by :func:`read_credentials`); ``timeout`` in seconds per request;
    ``max_chunk_bytes`` bounds one bulk request. :meth:`setup` installs the ISM retention
    policy and the index template (raises :class:`~exporter.events.sinks.SinkError`, cause
    ``setup``, to be retried). :meth:`send` / :meth:`send_serialized` take one batch and
    return one :class:`~exporter.events.sinks.ItemResult` per document, in order: ``ok``
    (stored, or a 409: already there), ``retry`` (connection, 429, 5xx, a failed request) or
    ``reject`` (a 400: this document cannot be indexed). They never raise for a document's
    fate; passwords never appear in errors (:func:`~exporter.events.sinks.redact`).
    """

    name = "opensearch"

    def __init__(
        self,
        settings: OpenSearch,
        *,
        timeout: float = 10.0,
        environ: Mapping[str, str] | None = None,
        max_chunk_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        from opensearchpy import OpenSearch as Client

        self.settings = settings
        self.prefix = settings.index_prefix
        self.max_chunk_bytes = max_chunk_bytes
        options: dict[str, Any] = {
            "hosts": list(settings.hosts),
            "verify_certs": settings.verify_tls,
            "ssl_show_warn": settings.verify_tls,
            "max_retries": 0,  # the shipper retries, with backoff and jitter
            "retry_on_timeout": False,
            "timeout": timeout,
        }
        if settings.ca_file is not None:
            options["ca_certs"] = str(settings.ca_file)
        credentials = read_credentials(settings, environ)
        if credentials is not None:
            options["http_auth"] = credentials
        if not settings.verify_tls:
            log.warning("OpenSearch TLS certificate verification is disabled (verify_tls: false)")
        self.client = Client(**options)

    def index_for(self, document: Mapping[str, Any]) -> str:
        """The daily index of ``document``: ``<prefix>-YYYY.MM.DD``."""
        day = str(document["time"])[:10].replace("-", ".")
        return f"{self.prefix}-{day}"

    def setup(self) -> None:
        """Install the ISM retention policy and the index template (idempotent)."""
        from opensearchpy.exceptions import TransportError

        try:
            self._install_policy()
        except TransportError as exc:
            status = exc.status_code
            if not isinstance(status, int) or status >= 500 or status in (401, 403, 429):
                raise SinkError(
                    f"cannot install the ISM policy: {redact(str(exc))}", "setup"
                ) from exc
            # 400/404: the ISM plugin is absent; shipping must not depend on it.
            log.warning(
                "cannot install the ISM retention policy (is the ISM plugin installed?): %s; "
                "old event indices will not be deleted automatically",
                redact(str(exc)),
            )
        try:
            self.client.indices.put_index_template(
                name=self.prefix, body=index_template(self.prefix)
            )
        except TransportError as exc:
            raise SinkError(
                f"cannot install the index template: {redact(str(exc))}", "setup"
            ) from exc

    def _install_policy(self) -> None:
        from opensearchpy.exceptions import ConflictError

        policy_id = f"{self.prefix}-retention"
        body = retention_policy(self.prefix, self.settings.retention)
        path = f"/_plugins/_ism/policies/{policy_id}"
        try:
            self.client.transport.perform_request("PUT", path, body=body)
            return
        except ConflictError:
            pass  # it exists: update it only when the retention changed
        current = self.client.transport.perform_request("GET", path)
        if _policy_age(current.get("policy", {})) == _policy_age(body["policy"]):
            return
        self.client.transport.perform_request(
            "PUT",
            path,
            body=body,
            params={
                "if_seq_no": current["_seq_no"],
                "if_primary_term": current["_primary_term"],
            },
        )
        log.info("updated the ISM policy %s to %s", policy_id, timevalue(self.settings.retention))

    def index_for_text(self, text: str) -> str:
        """:meth:`index_for` of a serialised document: read from its leading ``@timestamp``
        (canonical JSON sorts it first; it equals ``time`` in every event document), else
        parsed."""
        stamp = _LEADING_DAY.match(text)
        if stamp is None:
            return self.index_for(json.loads(text))
        return f"{self.prefix}-{stamp[1]}.{stamp[2]}.{stamp[3]}"

    def send(self, documents: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        """One ``streaming_bulk`` chunk of ``create`` actions; one result per document."""
        return self._bulk(
            [
                {
                    "_op_type": "create",
                    "_index": self.index_for(document),
                    "_id": document["event_id"],
                    "_source": dict(document),
                }
                for document in documents
            ]
        )

    def send_serialized(self, documents: Sequence[tuple[str, str]]) -> list[ItemResult]:
        """Like :meth:`send` for ``(event_id, JSON text)`` pairs: the text goes into the bulk
        body verbatim (opensearch-py does not re-serialise a string source)."""
        return self._bulk(
            [
                {
                    "_op_type": "create",
                    "_index": self.index_for_text(text),
                    "_id": event_id,
                    "_source": text,
                }
                for event_id, text in documents
            ]
        )

    def _bulk(self, actions: list[dict[str, Any]]) -> list[ItemResult]:
        from opensearchpy.helpers import streaming_bulk

        results: list[ItemResult] = []
        for ok, item in streaming_bulk(
            self.client,
            actions,
            chunk_size=max(1, len(actions)),
            max_chunk_bytes=self.max_chunk_bytes,
            raise_on_error=False,
            raise_on_exception=False,
            max_retries=0,
            yield_ok=True,
        ):
            _op, info = next(iter(item.items()))
            results.append(self._classify(bool(ok), info))
        return results

    @staticmethod
    def _classify(ok: bool, info: Mapping[str, Any]) -> ItemResult:
        event_id = str(info.get("_id"))
        status = _status(info)
        if ok or status == 409:  # 409: a create for an id that is already there
            return ItemResult(event_id, Outcome.OK, status)
        raw_error = info.get("error", "")
        error = redact(raw_error if isinstance(raw_error, str) else json.dumps(raw_error))
        if status is None:
            return ItemResult(event_id, Outcome.RETRY, None, error, "connection")
        if status == 429:
            return ItemResult(event_id, Outcome.RETRY, status, error, "throttled")
        if status >= 500:
            return ItemResult(event_id, Outcome.RETRY, status, error, "server_error")
        if "exception" in info:  # the whole request failed (auth, too large, ...)
            return ItemResult(event_id, Outcome.RETRY, status, error, f"http_{status}")
        if status == 400:  # this document cannot be indexed: mapping or parsing error
            return ItemResult(event_id, Outcome.REJECT, status, error, "rejected")
        return ItemResult(event_id, Outcome.RETRY, status, error, f"item_{status}")

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def _policy_age(policy: Mapping[str, Any]) -> Any:
    for state in policy.get("states", []):
        for transition in state.get("transitions", []):
            return transition.get("conditions", {}).get("min_index_age")
    return None

