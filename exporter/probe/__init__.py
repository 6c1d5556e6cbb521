"""One probe of one endpoint: a real python-tuf client refresh, and what it observed.

In: a :class:`~exporter.config.Repository` and one of its :class:`~exporter.config.Endpoint`
values, given to :meth:`Prober.probe`. Out: a :class:`ProbeResult` (never an exception): the
verdict as python-tuf decided it (``success``, a :class:`Reason`, the :class:`FailedRole`),
the facts of every role (:class:`RoleFacts`), every HTTP request made (:class:`RequestRecord`)
and timings in seconds. A fault of this host or of our code is ``exporter_error`` with an
:class:`ErrorCause` (:func:`exporter_error_result`), never a reason of the repository.

Client views (issue 16): :meth:`Prober.probe_views` probes an endpoint as a new client and
from each bootstrap root; :func:`run_client` runs an external client (issue 17); each result's
``client`` names its view (:data:`CLIENT_RETURNING`, :data:`CLIENT_NEW`,
:func:`bootstrap_client_name`, or the external client's name).

Signing probes (:class:`SignerMonitor`, :func:`probe_signer`) ask a configured signer to sign a
challenge and check its key against the role's keys; out comes a :class:`SignerResult`.
Depends on config and catalogue only.
"""

from exporter.probe.classify import exporter_error_result, exporter_fault
from exporter.probe.external import run_client
from exporter.probe.prober import Prober, temporary_directory
from exporter.probe.results import (
    CLIENT_NEW,
    CLIENT_RETURNING,
    DelegationSummary,
    ErrorCause,
    FailedRole,
    ProbeResult,
    Reason,
    RequestRecord,
    RoleFacts,
    RoleKeys,
    StoreError,
    bootstrap_client_name,
    rfc3339,
)
from exporter.probe.roots import TrustedRootError, load_bootstrap_roots, load_trusted_root
from exporter.probe.signers import (
    CachedKeySource,
    KeySource,
    SignerMonitor,
    SignerReason,
    SignerResult,
    probe_signer,
)

__all__ = [
    "CLIENT_NEW",
    "CLIENT_RETURNING",
    "CachedKeySource",
    "DelegationSummary",
    "ErrorCause",
    "FailedRole",
    "KeySource",
    "ProbeResult",
    "Prober",
    "Reason",
    "RequestRecord",
    "RoleFacts",
    "RoleKeys",
    "SignerMonitor",
    "SignerReason",
    "SignerResult",
    "StoreError",
    "TrustedRootError",
    "bootstrap_client_name",
    "exporter_error_result",
    "exporter_fault",
    "load_bootstrap_roots",
    "load_trusted_root",
    "probe_signer",
    "rfc3339",
    "run_client",
    "temporary_directory",
]
