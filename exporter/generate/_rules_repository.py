"""The repository family: what an endpoint serves and what its history reveals. Metadata expiry
(relative to each role's normal lifetime), verification failing on one endpoint or most of them,
a client view failing while returning clients update, mirrors lagging, rollbacks and anomalies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from exporter import catalogue
from exporter.catalogue import CLIENT_RETURNING
from exporter.generate._rules_common import PAGE, TICKET, _alert, _num, m

if TYPE_CHECKING:
    from exporter.generate.alerts import AlertOptions

#: Anomaly kinds that suggest a compromised or misused signing key.
COMPROMISE_KINDS: tuple[str, ...] = ("equivocation", "unknown_signer")


def expiry_threshold_expr(role: str, ratio: float, floor: float, cap: float) -> str:
    """PromQL for the expiry warning threshold of ``role``, in seconds, per repository.

    ``ratio`` of the role's normal lifetime as signed (``tuf_metadata_normal_lifetime_seconds``,
    learned by the history store), clamped to [``floor``, ``cap``]. Relative, so a 1-day
    timestamp, a 7-day snapshot and a 1-year root all stay quiet between two healthy
    signings; clamped, so a long-lived role is never warned about months ahead (``cap``) and a
    very short-lived one still leaves time to act (``floor``).
    """
    lifetime = f'{m("tuf_metadata_normal_lifetime_seconds")}{{role="{role}"}}'
    return (f"clamp({_num(ratio)} * max by (repository, role) ({lifetime}), "
            f"{_num(floor)}, {_num(cap)})")


def expiry_threshold(ratio: float, floor: float, cap: float, lifetime: float | None) -> float:
    """The threshold of :func:`expiry_threshold_expr` in seconds, for one role, in Python (the
    status page marks rows with it): ``ratio`` x ``lifetime`` clamped to [``floor``, ``cap``],
    and ``cap`` while the normal lifetime is not known. Keep the two in step."""
    if lifetime is None:
        return cap
    return min(max(ratio * lifetime, floor), cap)


def _expiry_expr(ratio: float, floor: float, caps: Mapping[str, float]) -> str:
    margin = m("tuf_metadata_expiry_margin_seconds")
    lifetime = m("tuf_metadata_normal_lifetime_seconds")
    parts = []
    for role in catalogue.TOP_LEVEL_ROLES:
        expiring = f'({margin}{{role="{role}"}} > 0)'
        threshold = expiry_threshold_expr(role, ratio, floor, caps[role])
        parts.append(
            f"(\n  {expiring}\n  < on (repository, role) group_left ()\n  {threshold}\n)")
        # normal lifetime not known (yet): the longest warning
        parts.append(f"(\n  {expiring} < {_num(caps[role])}\n"
                     f'  unless on (repository, role)\n  {lifetime}{{role="{role}"}}\n)')
    return "\nor\n".join(parts)


def client_view_failing_expr() -> str:
    """PromQL of TufClientViewFailing: one sample per (repository, endpoint, client) whose
    client view (``tuf_client_update_success``, issue 16) is 0 while the ``returning`` view of
    the same endpoint is 1.

    Nothing when ``returning`` fails too (TufEndpointVerificationFailing and
    TufVerificationMassFailure are about that), nor for a view without a series yet (the
    ``== 0`` selects existing samples only). A probe stopped by a fault of the exporter
    (``exporter_error``) is no verdict and leaves the gauge as it was, so it cannot fire this.
    """
    success = m("tuf_client_update_success")
    return (f'{success}{{client!="{CLIENT_RETURNING}"}} == 0\n'
            "and on (repository, endpoint)\n"
            f'{success}{{client="{CLIENT_RETURNING}"}} == 1')


def _repository_alerts(o: AlertOptions) -> list[dict[str, Any]]:
    success = m("tuf_probe_success")
    where = "{{ $labels.role }} metadata of {{ $labels.repository }} on {{ $labels.endpoint }}"
    kinds = "|".join(COMPROMISE_KINDS)
    return [
        _alert(o, "TufMetadataExpiringSoon",
               _expiry_expr(o.expiry_ticket_lifetime_ratio, o.expiry_ticket_min_seconds,
                            o.expiry_ticket_seconds), TICKET,
               o.expiry_ticket_for, f"{where} expires soon",
               f"{where} expires in {{{{ $value | humanizeDuration }}}}; re-sign it before "
               "clients refuse it."),
        _alert(o, "TufMetadataExpiringCritical",
               _expiry_expr(o.expiry_page_lifetime_ratio, o.expiry_page_min_seconds,
                            o.expiry_page_seconds), PAGE,
               o.expiry_page_for, f"{where} is about to expire",
               f"{where} expires in {{{{ $value | humanizeDuration }}}}; once expired every "
               "client refuses to update from this repository."),
        # negated, so $value is the time since expiry
        _alert(o, "TufMetadataExpired",
               f"-1 * {m('tuf_metadata_expiry_margin_seconds')} >= 0", PAGE, o.expired_for,
               f"{where} has expired",
               f"{where} expired {{{{ $value | humanizeDuration }}}} ago; clients refuse to "
               "update from it (an expired timestamp blocks every update)."),
        _alert(o, "TufVerificationMassFailure",
               f"(\n  count by (repository) ({success} == 0)\n  /\n"
               f"  count by (repository) ({success})\n) >= {_num(o.mass_failure_ratio)}",
               PAGE, o.mass_failure_for,
               "{{ $labels.repository }}: most endpoints fail verification",
               "{{ $value | humanizePercentage }} of the endpoints of {{ $labels.repository }} "
               "fail the TUF client refresh or canary downloads: clients cannot update."),
        _alert(o, "TufEndpointVerificationFailing", f"{success} == 0", TICKET,
               o.endpoint_failure_for,
               "{{ $labels.repository }} on {{ $labels.endpoint }} fails verification",
               "The TUF client probe of {{ $labels.repository }} on {{ $labels.endpoint }} has "
               "failed for a while; see tuf_probe_failures_total for the reason and role."),
        _alert(o, "TufClientViewFailing", client_view_failing_expr(), PAGE,
               o.client_view_failure_for,
               "{{ $labels.client }} clients cannot update from {{ $labels.repository }} on "
               "{{ $labels.endpoint }}",
               "The {{ $labels.client }} client view of {{ $labels.repository }} on "
               "{{ $labels.endpoint }} fails while returning clients (the probe's cached "
               "client) update: part of the fleet cannot update (new: first installs with "
               "an empty cache; bootstrap-root-v<N>: clients shipped with root version N; "
               "any other: the external client of that name, another TUF implementation or "
               "release). See tuf_client_update_failures_total for the reason and role "
               "(client_rejected, client_timeout, client_error for an external client)."),
        _alert(o, "TufMirrorLagging",
               f"{m('tuf_mirror_lag_seconds')} > {_num(o.mirror_lag_seconds)}", TICKET,
               o.mirror_lag_for,
               "Mirror {{ $labels.endpoint }} of {{ $labels.repository }} lags the primary",
               "Mirror {{ $labels.endpoint }} of {{ $labels.repository }} has been behind the "
               "primary for {{ $value | humanizeDuration }}."),
        _alert(o, "TufRollbackDetected",
               f"increase({m('tuf_rollbacks_detected_total')}[{o.event_window}]) > 0", PAGE, "0s",
               f"Rollback or freeze of {where}",
               f"{where} went back to an older version or froze past its re-signing cadence "
               f"({{{{ $value | humanize }}}} times in {o.event_window}): possible rollback or "
               "freeze attack, or a broken mirror."),
        _alert(o, "TufPossibleKeyCompromise",
               f'increase({m("tuf_anomalies_total")}{{kind=~"{kinds}"}}[{o.event_window}]) > 0',
               PAGE, "0s",
               "{{ $labels.kind }} on {{ $labels.repository }} ({{ $labels.endpoint }}): "
               "possible key compromise",
               "{{ $labels.repository }} on {{ $labels.endpoint }} showed {{ $labels.kind }} "
               "(two different metadata files with the same version, or a signature by a key "
               "nobody knows): treat as a possible signing key compromise."),
        _alert(o, "TufMetadataAnomaly",
               f'increase({m("tuf_anomalies_total")}{{kind!~"{kinds}"}}[{o.event_window}]) > 0',
               TICKET, "0s",
               "{{ $labels.kind }} on {{ $labels.repository }} ({{ $labels.endpoint }})",
               "{{ $labels.repository }} on {{ $labels.endpoint }} showed the anomaly "
               "{{ $labels.kind }} {{ $value | humanize }} times in the last "
               + o.event_window + "."),
    ]
