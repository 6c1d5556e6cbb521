"""History: what every endpoint served over time, and what that history reveals.

In: every :class:`~exporter.probe.ProbeResult`, given to :meth:`HistoryStore.observe`
(one SQLite transaction in ``<state_dir>/history.sqlite``). Out: :class:`Finding` values
(rollbacks, freezes, equivocation, unknown signers, key rotations, mirror lag, ...; each
becomes an event, committed with it to the outbox the shipper drains) and the history
metrics of the catalogue. Errors: :class:`HistoryError` (and its corrupt/recovered kinds) for
a database that cannot be used. The re-signing cadence rule (:func:`expected_period`,
:class:`CadenceTracker`) is the one both freeze detection and ``tuf_signer_cadence_ok`` use.
Times are Unix seconds in the database, aware UTC datetimes outside it.
Depends on probe, events, config, catalogue and sqlite_files.
"""

from exporter.history._rules import configured_endpoints
from exporter.history.cadence import (
    CONFIGURED_GRACE_SECONDS,
    LEARNED_TOLERANCE,
    CadenceTracker,
    ExpectedPeriod,
    PeriodSource,
    evaluate,
    expected_period,
    is_on_cadence,
    online_roles,
)
from exporter.history.findings import Finding, FindingKind, RootVersion, Severity
from exporter.history.recorder import HistoryStore
from exporter.history.store import (
    FILENAME,
    HistoryCorruptError,
    HistoryError,
    HistoryRecoveredError,
)

__all__ = [
    "CONFIGURED_GRACE_SECONDS",
    "FILENAME",
    "LEARNED_TOLERANCE",
    "CadenceTracker",
    "ExpectedPeriod",
    "Finding",
    "FindingKind",
    "HistoryCorruptError",
    "HistoryError",
    "HistoryRecoveredError",
    "HistoryStore",
    "PeriodSource",
    "RootVersion",
    "Severity",
    "configured_endpoints",
    "evaluate",
    "expected_period",
    "is_on_cadence",
    "online_roles",
]
