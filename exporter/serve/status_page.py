"""The status page: the state of every repository, endpoint and signer at a glance.

``GET /`` lists every configured endpoint with its verdict, reason and failed role, the age of
its last probe, the metadata versions it serves, its earliest expiry with the margin left, its
lag behind the primary (mirrors) and the signers' status; rows that fail come first, then those
an alert is about to ticket (expiry margin or lag past the alert thresholds, stalled probes),
then those not probed yet, then the healthy ones. Below them, one row per client view other than
``returning`` (``new``, ``bootstrap-root-v<N>``, issue 16) of each endpoint, failing first
likewise. ``GET /endpoint?repository=R&endpoint=E``
shows one endpoint: the facts of its verdict, the request log (URL, HTTP status, bytes,
seconds) and message of its recent probes, and its last failures with their times and logs,
kept per endpoint (see :class:`exporter.serve.collector.EndpointLog`).

The pages are plain server-rendered HTML (no script; ``<details>`` unfolds the logs) with a
viewport and a narrow layout for phones. They read the in-memory state the ``/metrics``
collector reads (the :class:`~exporter.serve.collector.ProbeStore`, the history store's metric
families, the signer monitor) and never wait for a probe. Every text that comes from a
repository, a configuration or an error message is escaped with :func:`html.escape`.

Runbook links point at ``{AlertOptions.runbook_base_url}/{alert-name}.md``, the very URL the
alert rules carry; the thresholds that mark a row as a warning are the alert rules' own
(:class:`~exporter.generate.alerts.AlertOptions`), so the page and the alerts agree.

It is longer than most modules (about 660 lines) because rendering the two pages is one job:
the row model, the order of the rows and the HTML fragments read the same rows and the same
alert thresholds.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from urllib.parse import parse_qs, urlencode

from prometheus_client.core import Metric

from exporter import __version__
from exporter.catalogue import TOP_LEVEL_ROLES
from exporter.config.model import Config, Signer
from exporter.generate.alerts import AlertOptions, expiry_threshold, kebab
from exporter.probe.results import CLIENT_RETURNING, ProbeResult, Reason, RequestRecord
from exporter.probe.signers import SignerResult
from exporter.serve.collector import EndpointLog, ProbeStore

__all__ = ["Page", "StatusPage", "reason_alert", "view_reason_alert"]

#: Requests shown per probe on the endpoint page (a delegation sweep can make thousands).
MAX_REQUESTS_SHOWN = 200
#: Characters of a probe's message shown in the overview table (the endpoint page has all): a
#: longer message keeps its start and its end around an ellipsis, because an external client's
#: message ends with the tail of its output, where a program says why it failed (a client that
#: printed 100 MB of trace before its error would otherwise show only trace).
MESSAGE_PREVIEW = 160

#: The alert whose runbook explains a failure reason; the others are the endpoint alert's.
_REASON_ALERTS: Mapping[Reason, str] = {
    Reason.EXPIRED: "TufMetadataExpired",
    Reason.ROLLBACK: "TufRollbackDetected",
    Reason.EXPORTER_ERROR: "TufExporterErrors",
}
_FAILING_ALERT = "TufEndpointVerificationFailing"
#: The alert that pages for a failing client view other than returning (any reason but a fault
#: of the exporter, which is no verdict on the view).
_VIEW_FAILING_ALERT = "TufClientViewFailing"


def reason_alert(reason: Reason | None) -> str:
    """The alert whose runbook covers a failed verdict with ``reason``."""
    return _REASON_ALERTS.get(reason, _FAILING_ALERT) if reason is not None else _FAILING_ALERT


def view_reason_alert(reason: Reason | None) -> str:
    """The alert whose runbook covers a failed verdict with ``reason`` of a client view other
    than ``returning`` (issue 16; an external client's too): TufClientViewFailing, the alert
    that pages for it, except for a fault of the exporter (:func:`reason_alert`'s)."""
    return reason_alert(reason) if reason == Reason.EXPORTER_ERROR else _VIEW_FAILING_ALERT


@dataclass(frozen=True)
class Page:
    """A rendered page: HTTP status and UTF-8 HTML."""

    status: int
    html: str


class State(IntEnum):
    """A row's state; rows are sorted by it (failing first)."""

    FAILING = 0
    WARNING = 1
    PENDING = 2
    OK = 3


_STATE_TEXT: Mapping[State, str] = {
    State.FAILING: "FAILING", State.WARNING: "WARNING", State.PENDING: "NOT PROBED YET",
    State.OK: "OK",
}


@dataclass(frozen=True)
class _Note:
    """One thing to say about a row, with the alert whose runbook covers it (if any)."""

    text: str
    alert: str | None = None


@dataclass(frozen=True)
class _Row:
    repository: str
    endpoint: str
    primary: bool
    log: EndpointLog
    state: State
    notes: tuple[_Note, ...]
    lag_seconds: float | None
    lag_versions: float | None
    #: The client view shown (issue 16): None for the endpoint itself (``returning``).
    client: str | None = None


def _e(value: object) -> str:
    """HTML-escape any text (quotes too, so it is safe in attribute values)."""
    return html.escape(str(value), quote=True)


def _duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``, ``0.25s``: two units at most."""
    seconds = abs(seconds)
    if seconds < 10:
        return f"{seconds:.2f}s".replace(".00s", "s")
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _age(moment: float, now: float) -> str:
    """``12s ago``, ``3m 4s ago`` (whole seconds; a moment in the future is ``0s ago``)."""
    return f"{_duration(float(int(max(0.0, now - moment))))} ago"


def _stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _when(moment: float, now: float) -> str:
    """UTC time and age: ``2026-11-29 18:40:12Z (12s ago)``."""
    return f"{_stamp(moment)} ({_age(moment, now)})"


def _when_cell(moment: float, now: float) -> str:
    """Age first (what matters at a glance), then the UTC time, as table-cell HTML."""
    return f"{_e(_age(moment, now))}<br><small>{_e(_stamp(moment))}</small>"


def _margin(expires: datetime, now: float) -> str:
    left = expires.timestamp() - now
    return f"in {_duration(left)}" if left >= 0 else f"expired {_duration(left)} ago"


def _samples(families: Iterable[Metric], name: str) -> Iterable[tuple[dict[str, str], float]]:
    for fam in families:
        if fam.name == name:
            for sample in fam.samples:
                yield sample.labels, sample.value


class StatusPage:
    """Renders the status pages from the exporter's in-memory state.

    ``config`` returns the configuration in force (the endpoints and signers to list, in
    configuration order); ``history_metrics`` the history store's metric families (mirror lag);
    ``signer_results`` the latest signing probe of each signer; ``options`` the alert options
    (runbook base URL and thresholds); ``clock`` Unix seconds.
    """

    def __init__(
        self,
        store: ProbeStore,
        config: Callable[[], Config],
        *,
        history_metrics: Callable[[], Iterable[Metric]] = lambda: (),
        signer_results: Callable[[], Sequence[SignerResult]] = lambda: (),
        options: AlertOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._config = config
        self._history_metrics = history_metrics
        self._signer_results = signer_results
        self.options = options or AlertOptions()
        self._clock = clock

    # ------------------------------------------------------------------ pages

    def overview(self, query: str = "") -> Page:
        """``GET /``: every endpoint (failing first) and every signer."""
        now = self._clock()
        rows = sorted(self._rows(now), key=lambda r: (r.state, r.repository, not r.primary,
                                                      r.endpoint))
        failing = sum(r.state is State.FAILING for r in rows)
        counts = ", ".join(f"{sum(r.state is s for r in rows)} {_STATE_TEXT[s].lower()}"
                           for s in State)
        summary = f"{_plural(len(rows), 'endpoint')}: {counts}"
        body = [
            f'<p class="summary {"bad" if failing else "good"}">{_e(summary)}</p>',
            "<h2>Endpoints</h2>",
            self._endpoint_table(rows, now),
            "<h2>Client views</h2>",
            self._view_table(now),
            "<h2>Signers</h2>",
            self._signer_table(now),
        ]
        return Page(200, _document("TUF Exporter", "\n".join(body), now))

    def endpoint(self, query: str) -> Page:
        """``GET /endpoint?repository=R&endpoint=E``: one endpoint's probes and failures;
        ``&client=C``: those of one of its client views (issue 16) instead.

        404 when no configured endpoint has that name, or the view has no result; 400 when a
        parameter is missing.
        """
        now = self._clock()
        params = parse_qs(query)
        repository = (params.get("repository") or [""])[0]
        endpoint = (params.get("endpoint") or [""])[0]
        client = (params.get("client") or [""])[0]
        if not repository or not endpoint:
            return Page(400, _document("Bad request", "<p>Give both <code>repository</code> "
                                       "and <code>endpoint</code>.</p>", now))
        row = next((r for r in self._rows(now)
                    if r.repository == repository and r.endpoint == endpoint), None)
        if row is None:
            text = f"No endpoint {endpoint!r} of repository {repository!r} is configured."
            return Page(404, _document("Not found", f"<p>{_e(text)}</p>", now))
        if client and client != CLIENT_RETURNING:
            log = self._store.endpoint_log(repository, endpoint, client)
            if log.latest is None:
                text = f"The client view {client!r} of {repository} / {endpoint} has no result."
                return Page(404, _document("Not found", f"<p>{_e(text)}</p>", now))
            latest = log.latest
            notes = () if latest.success else (
                _Note(str(latest.reason or Reason.OTHER), view_reason_alert(latest.reason)),)
            row = _Row(repository, endpoint, row.primary, log,
                       State.OK if latest.success else State.FAILING, notes, None, None, client)
            return Page(200, _document(f"{repository} / {endpoint} / {client}",
                                       self._endpoint_detail(row, now), now))
        return Page(200, _document(f"{repository} / {endpoint}",
                                   self._endpoint_detail(row, now), now))

    # ------------------------------------------------------------------ state

    def _rows(self, now: float) -> list[_Row]:
        config = self._config()
        families = list(self._history_metrics())
        lag_s = {(labels.get("repository"), labels.get("endpoint")): value
                 for labels, value in _samples(families, "tuf_mirror_lag_seconds")}
        lag_v: dict[tuple[str | None, str | None], float] = {}
        for labels, value in _samples(families, "tuf_mirror_lag_versions"):
            key = (labels.get("repository"), labels.get("endpoint"))
            lag_v[key] = max(value, lag_v.get(key, 0.0))
        lifetimes = {(labels.get("repository"), labels.get("role")): value
                     for labels, value in _samples(families,
                                                   "tuf_metadata_normal_lifetime_seconds")}
        rows = []
        for repo in config.repositories:
            for endpoint in repo.endpoints:
                log = self._store.endpoint_log(repo.name, endpoint.name)
                key = (repo.name, endpoint.name)
                lives = {role: lifetimes.get((repo.name, role)) for role in TOP_LEVEL_ROLES}
                state, notes = self._judge(log.latest, lag_s.get(key), lives, now)
                rows.append(_Row(repo.name, endpoint.name, endpoint is repo.primary, log, state,
                                 notes, lag_s.get(key), lag_v.get(key)))
        return rows

    def _judge(self, latest: ProbeResult | None, lag: float | None,
               lifetimes: Mapping[str, float | None],
               now: float) -> tuple[State, tuple[_Note, ...]]:
        """The row's state and what to say about it, by the alert rules' thresholds (expiry:
        relative to each role's normal lifetime,
        :func:`exporter.generate.alerts.expiry_threshold`)."""
        o = self.options
        if latest is None:
            return State.PENDING, ()
        notes: list[_Note] = []
        if not latest.success:
            notes.append(_Note(str(latest.reason or Reason.OTHER), reason_alert(latest.reason)))
        if now - latest.finished_at > o.probe_stall_seconds:
            notes.append(_Note(f"last probe {_duration(now - latest.finished_at)} ago",
                               "TufProbesStalled"))
        for role in TOP_LEVEL_ROLES:
            facts = latest.roles.get(role)
            if facts is None:
                continue
            left = facts.expires.timestamp() - now
            if left < 0:
                notes.append(_Note(f"{role} expired", "TufMetadataExpired"))
            elif left < expiry_threshold(o.expiry_page_lifetime_ratio, o.expiry_page_min_seconds,
                                         o.expiry_page_seconds[role], lifetimes[role]):
                notes.append(_Note(f"{role} expires {_margin(facts.expires, now)}",
                                   "TufMetadataExpiringCritical"))
            elif left < expiry_threshold(o.expiry_ticket_lifetime_ratio,
                                         o.expiry_ticket_min_seconds,
                                         o.expiry_ticket_seconds[role], lifetimes[role]):
                notes.append(_Note(f"{role} expires {_margin(facts.expires, now)}",
                                   "TufMetadataExpiringSoon"))
        if lag is not None and lag > o.mirror_lag_seconds:
            notes.append(_Note(f"behind the primary for {_duration(lag)}", "TufMirrorLagging"))
        if latest.delegations.failing:
            notes.append(_Note(f"{latest.delegations.failing} delegated roles failing",
                               _FAILING_ALERT))
        if latest.delegations.truncated:
            notes.append(_Note("delegation sweep truncated", "TufDelegationSweepTruncated"))
        unique: list[_Note] = []  # one runbook link per alert: the first note says it best
        for note in notes:
            if note.alert is None or all(note.alert != u.alert for u in unique):
                unique.append(note)
        if not latest.success:
            return State.FAILING, tuple(unique)
        return (State.WARNING if unique else State.OK), tuple(unique)

    def runbook_url(self, alert: str) -> str:
        """The runbook of ``alert``, exactly as the alert rules' ``runbook_url`` annotation."""
        return f"{self.options.runbook_base_url.rstrip('/')}/{kebab(alert)}.md"

    # ------------------------------------------------------------------ rendering

    def _note(self, note: _Note) -> str:
        if note.alert is None:
            return _e(note.text)
        return (f'{_e(note.text)} <a class="runbook" href="{_e(self.runbook_url(note.alert))}"'
                f' title="{_e(note.alert)}">runbook</a>')

    def _endpoint_table(self, rows: Sequence[_Row], now: float) -> str:
        if not rows:
            return "<p>No endpoint is configured.</p>"
        head = ("Verdict", "Repository", "Endpoint", "Reason / notes", "Role", "Last probe",
                "Versions", "Earliest expiry", "Mirror lag", "Message")
        lines = [_table_head("endpoints", head)]
        for row in rows:
            latest = row.log.latest
            link = "endpoint?" + urlencode({"repository": row.repository,
                                            "endpoint": row.endpoint})
            kind = "primary" if row.primary else "mirror"
            cells = [
                f'<span class="state">{_STATE_TEXT[row.state]}</span>',
                _e(row.repository),
                f'<a href="{_e(link)}">{_e(row.endpoint)}</a> <small>{kind}</small>',
                "<br>".join(self._note(n) for n in row.notes),
                "" if latest is None or latest.role is None else _e(latest.role),
                "never" if latest is None else _when_cell(latest.finished_at, now),
                "" if latest is None else _versions(latest),
                "" if latest is None else _earliest_expiry(latest, now),
                _lag(row),
                "" if latest is None else _e(_preview(latest.message)),
            ]
            lines.append(_table_row(row.state, head, cells))
        lines.append("</tbody></table></div>")
        return "\n".join(lines)

    def _view_table(self, now: float) -> str:
        """One row per client view besides ``returning`` that has a verdict, failing first
        (then by repository, endpoint in configuration order, client); a failing one links
        the runbook of :func:`view_reason_alert`."""
        judged = []
        for repo in self._config().repositories:
            for order, endpoint in enumerate(repo.endpoints):
                for client in self._store.clients(repo.name, endpoint.name):
                    latest = self._store.endpoint_log(repo.name, endpoint.name, client).latest
                    if latest is None:
                        continue
                    state = State.OK if latest.success else State.FAILING
                    judged.append(((state, repo.name, order, client), latest))
        if not judged:
            return ("<p>No client view has been probed yet (<code>new_client_interval</code>"
                    " 0 turns them off).</p>")
        judged.sort(key=lambda j: j[0])
        head = ("Verdict", "Repository", "Endpoint", "Client", "Reason", "Role", "Last check",
                "Versions", "Message")
        lines = [_table_head("views", head)]
        for (state, _, _, client), latest in judged:
            link = "endpoint?" + urlencode({"repository": latest.repository,
                                            "endpoint": latest.endpoint, "client": client})
            reason = "" if latest.success else self._note(
                _Note(str(latest.reason or Reason.OTHER), view_reason_alert(latest.reason)))
            cells = [
                f'<span class="state">{_STATE_TEXT[state]}</span>',
                _e(latest.repository),
                _e(latest.endpoint),
                f'<a href="{_e(link)}">{_e(client)}</a>',
                reason,
                "" if latest.role is None else _e(latest.role),
                _when_cell(latest.finished_at, now),
                _versions(latest),
                _e(_preview(latest.message)),
            ]
            lines.append(_table_row(state, head, cells))
        lines.append("</tbody></table></div>")
        return "\n".join(lines)

    def _signer_table(self, now: float) -> str:
        signers: Sequence[Signer] = self._config().signers
        if not signers:
            return "<p>No signer is configured.</p>"
        results = {r.signer: r for r in self._signer_results()}
        judged = []
        for signer in signers:
            result = results.get(signer.name)
            notes: list[_Note] = []
            if result is None:
                state = State.PENDING
            else:
                if not result.up:
                    notes.append(_Note(str(result.reason or "down"), "TufSignerDown"))
                if result.authorized is False:
                    notes.append(_Note("key not authorized", "TufSignerKeyUnauthorized"))
                state = State.FAILING if notes else State.OK
            judged.append((state, signer, result, notes))
        judged.sort(key=lambda j: (j[0], j[1].repository, j[1].role, j[1].name))
        head = ("Status", "Signer", "Repository", "Role", "Reason / notes", "Key authorized",
                "Last probe", "Message")
        lines = [_table_head("signers", head)]
        for state, signer, result, notes in judged:
            authorized = ("" if result is None else
                          {True: "yes", False: "no", None: "unknown"}[result.authorized])
            cells = [
                f'<span class="state">{_STATE_TEXT[state]}</span>',
                _e(signer.name), _e(signer.repository), _e(signer.role),
                "<br>".join(self._note(n) for n in notes),
                authorized,
                "never" if result is None else _when_cell(result.started_at.timestamp(), now),
                "" if result is None else _e(_preview(result.message)),
            ]
            lines.append(_table_row(state, head, cells))
        lines.append("</tbody></table></div>")
        return "\n".join(lines)

    def _endpoint_detail(self, row: _Row, now: float) -> str:
        latest = row.log.latest
        kind = "primary" if row.primary else "mirror"
        if row.client is not None:
            kind += f", client view {row.client}"
        parts = ['<p><a href="./">&larr; all endpoints</a></p>',
                 f'<p class="verdict {row.state.name.lower()}"><span class="state">'
                 f"{_STATE_TEXT[row.state]}</span> {_e(row.repository)} / {_e(row.endpoint)} "
                 f"<small>{_e(kind)}</small></p>"]
        if row.notes:
            parts.append("<ul>" + "".join(f"<li>{self._note(n)}</li>" for n in row.notes)
                         + "</ul>")
        if latest is not None:
            parts.append("<h2>Verdict in force</h2>")
            parts.append(_facts(latest, now, row))
        else:
            parts.append("<p>This endpoint has not been probed yet.</p>")
        recent = row.log.recent
        if recent:
            parts.append("<h2>Last probe</h2>")
            parts.append(_probe(recent[0], now, open_log=True))
            if len(recent) > 1:
                parts.append(f"<h2>Earlier probes ({len(recent) - 1})</h2>")
                parts.extend(_probe(p, now, open_log=False) for p in recent[1:])
        parts.append(f"<h2>Last failures of this endpoint ({len(row.log.failures)})</h2>")
        if row.log.failures:
            parts.extend(_probe(p, now, open_log=False) for p in row.log.failures)
        else:
            parts.append("<p>No failed verdict since the exporter started.</p>")
        return "\n".join(parts)


# ---------------------------------------------------------------------- fragments


def _plural(count: float, noun: str) -> str:
    return f"{count:g} {noun}" + ("" if count == 1 else "s")


def _preview(message: str | None) -> str:
    text = message or ""
    if len(text) <= MESSAGE_PREVIEW:
        return text
    half = (MESSAGE_PREVIEW - 1) // 2
    return text[:half] + "\u2026" + text[-(MESSAGE_PREVIEW - 1 - half):]


def _versions(result: ProbeResult) -> str:
    return "<br>".join(f"{_e(role)}&nbsp;{result.roles[role].version}"
                       for role in TOP_LEVEL_ROLES if role in result.roles)


def _earliest_expiry(result: ProbeResult, now: float) -> str:
    candidates = [(facts.expires, role) for role, facts in result.roles.items()]
    if result.delegations.min_expires is not None:
        candidates.append((result.delegations.min_expires, "delegated"))
    if not candidates:
        return ""
    expires, role = min(candidates)
    stamp = expires.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")
    return f"{_e(role)}: {_e(stamp)}<br>{_e(_margin(expires, now))}"


def _lag(row: _Row) -> str:
    if row.primary:
        return "&mdash;"
    if row.lag_seconds is None:
        return "unknown"
    if row.lag_seconds == 0 and not row.lag_versions:
        return "current"
    versions = "" if row.lag_versions is None else f"{_plural(row.lag_versions, 'version')}, "
    return _e(f"{versions}behind for {_duration(row.lag_seconds)}")


def _facts(result: ProbeResult, now: float, row: _Row) -> str:
    lines = [f"<p>Probed {_e(_when(result.finished_at, now))} in "
             f"{_e(_duration(result.duration_seconds))}"
             + (" (timestamp unchanged, verdict reused)" if result.reused_verdict else "")
             + ".</p>"]
    if result.message:
        lines.append(f'<pre class="message">{_e(result.message)}</pre>')
    if not result.success:
        lines.append("<p>The metadata below is what the last probes could read; a failed "
                     "probe keeps the facts of earlier ones.</p>")
    head = ("Role", "Version", "Expires", "Margin", "Signatures", "Bytes")
    lines.append(_table_head("roles", head))
    for role in TOP_LEVEL_ROLES:
        facts = result.roles.get(role)
        if facts is None:
            continue
        cells = [_e(role), str(facts.version),
                 _e(facts.expires.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")),
                 _e(_margin(facts.expires, now)),
                 f"{facts.signatures_valid} of {facts.threshold} needed",
                 str(facts.size_bytes)]
        lines.append(_table_row(State.OK, head, cells))
    lines.append("</tbody></table></div>")
    d = result.delegations
    if d.count:
        lines.append(f"<p>Delegated roles: {d.count}, failing: {d.failing}"
                     + (", sweep truncated" if d.truncated else "") + ".</p>")
        if d.failures:
            lines.append("<ul>" + "".join(f"<li>{_e(name)}: {_e(reason)}</li>"
                                          for name, reason in sorted(d.failures.items()))
                         + "</ul>")
    if not row.primary:
        lines.append(f"<p>Mirror lag: {_lag(row)}.</p>")
    return "\n".join(lines)


def _probe(result: ProbeResult, now: float, *, open_log: bool) -> str:
    verdict = "ok" if result.success else str(result.reason or Reason.OTHER)
    if result.reason is Reason.EXPORTER_ERROR:
        verdict += f" ({result.cause or 'internal'}: a fault of this host, no verdict)"
    role = "" if result.role is None else f", role {result.role}"
    summary = (f"{_when(result.started_at.timestamp(), now)}: {verdict}{role}, "
               f"{_duration(result.duration_seconds)}, {_plural(len(result.requests), 'request')}")
    state = "ok" if result.success else "failing"
    lines = [f'<details class="probe {state}"{" open" if open_log else ""}>',
             f"<summary>{_e(summary)}</summary>"]
    if result.message:
        lines.append(f'<pre class="message">{_e(result.message)}</pre>')
    lines.append(_request_log(result.requests))
    lines.append("</details>")
    return "\n".join(lines)


def _request_log(requests: Sequence[RequestRecord]) -> str:
    if not requests:
        return "<p>No HTTP request was made.</p>"
    head = ("URL", "Fetched", "Status", "Bytes", "Seconds", "Retries")
    lines = [_table_head("requests", head, unique=False)]
    for request in requests[:MAX_REQUESTS_SHOWN]:
        status = str(request.status) if request.status is not None else "no response"
        if request.error:
            status += f": {request.error}"
        if request.memo:  # another client view of the pass downloaded it
            status += " (from this pass's memo, no request)"
        cells = [f'<span class="url">{_e(request.url)}</span>', _e(request.role), _e(status),
                 str(request.bytes), f"{request.duration_seconds:.3f}", str(request.retries)]
        # only "no response" is marked: an HTTP error can be part of a healthy refresh (the 404
        # that ends the search for a newer root); the verdict above is python-tuf's
        lines.append(_table_row(State.FAILING if request.status is None else State.OK, head,
                                cells))
    lines.append("</tbody></table></div>")
    if len(requests) > MAX_REQUESTS_SHOWN:
        lines.append(f"<p>{len(requests) - MAX_REQUESTS_SHOWN} more requests not shown.</p>")
    return "\n".join(lines)


def _table_head(name: str, head: Sequence[str], *, unique: bool = True) -> str:
    """Open a table; ``unique`` tables (one per page) also get ``id=name``."""
    cols = "".join(f"<th>{_e(h)}</th>" for h in head)
    ident = f'id="{name}" ' if unique else ""
    return (f'<div class="scroll"><table {ident}class="{name}">'
            f"<thead><tr>{cols}</tr></thead><tbody>")


def _table_row(state: State, head: Sequence[str], cells: Sequence[str]) -> str:
    tds = "".join(f'<td data-label="{_e(h)}">{c}</td>'
                  for h, c in zip(head, cells, strict=True))
    return f'<tr class="{state.name.lower()}">{tds}</tr>'


_STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:110rem;padding:.5rem 1rem;color:#1b1b1b;background:#fff;line-height:1.35}
h1{font-size:1.4rem;margin:.4rem 0}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
nav a{margin-right:1rem}small{color:#555}
.summary{font-weight:600;padding:.4rem .6rem;border-radius:4px}
.summary.bad{background:#fde2e1}.summary.good{background:#e3f4e3}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid #ddd;padding:.3rem .45rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}
tr.failing td{background:#fdecea}tr.warning td{background:#fff6db}
tr.pending td{background:#f4f4f4}
tr.failing .state,.verdict.failing .state{color:#a4000f;font-weight:700}
tr.warning .state,.verdict.warning .state{color:#8a5a00;font-weight:700}
tr.ok .state,.verdict.ok .state{color:#17622a;font-weight:700}
.url{word-break:break-all}
pre.message{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:.4rem}
details{margin:.3rem 0;border:1px solid #ddd;border-radius:4px;padding:.3rem .5rem}
details.failing{border-color:#e9a5a0}summary{cursor:pointer}
@media (max-width:700px){
 thead{display:none}table,tbody,tr,td{display:block}
 tr{border:1px solid #ccc;border-radius:4px;margin:.5rem 0}
 td{border:none;padding:.15rem .5rem;overflow-wrap:anywhere}
 td:empty{display:none}
 td::before{content:attr(data-label) ": ";font-weight:600;color:#444}
}
"""


def _document(title: str, body: str, now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<nav><a href="./">Status</a><a href="metrics">Metrics</a><a href="-/healthy">Health</a><a
 href="-/ready">Readiness</a></nav>
<p><small>tuf-exporter {_e(__version__)}, page rendered {_e(stamp)}; reload the page to
refresh.</small></p>
{body}
</body>
</html>
"""
