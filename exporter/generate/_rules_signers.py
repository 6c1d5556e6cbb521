"""The signers family: a signer that cannot sign, an online role not re-signed on time, a signer
key the repository's metadata does not authorize (``tuf_signer_*``, from the signing probes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.generate._rules_common import PAGE, TICKET, _alert, m

if TYPE_CHECKING:
    from exporter.generate.alerts import AlertOptions


def _signer_alerts(o: AlertOptions) -> list[dict[str, Any]]:
    return [
        _alert(o, "TufSignerDown", f"{m('tuf_signer_up')} == 0", TICKET, o.signer_down_for,
               "Signer {{ $labels.signer }} ({{ $labels.repository }}/{{ $labels.role }}) "
               "cannot sign",
               "The signing probe of {{ $labels.signer }} for the {{ $labels.role }} role of "
               "{{ $labels.repository }} has not produced a valid signature for "
               + o.signer_down_for + "."),
        _alert(o, "TufSignerOffCadence", f"{m('tuf_signer_cadence_ok')} == 0", TICKET,
               o.signer_cadence_for,
               "{{ $labels.role }} of {{ $labels.repository }} is not re-signed on time",
               "The online role {{ $labels.role }} of {{ $labels.repository }} was not re-signed "
               "within its expected period."),
        _alert(o, "TufSignerKeyUnauthorized", f"{m('tuf_signer_key_authorized')} == 0", PAGE,
               o.signer_unauthorized_for,
               "Signer {{ $labels.signer }} key is not authorized for {{ $labels.repository }}/"
               "{{ $labels.role }}",
               "The key of signer {{ $labels.signer }} is not among the keys the current "
               "metadata of {{ $labels.repository }} authorizes for {{ $labels.role }}: its "
               "signatures will not count."),
    ]
