"""Fault catalogue and fault implementations for the simulated repository.

A fault changes what one server endpoint serves. It never changes the
repository itself: faults that need signed content (expired, badly signed,
rolled back ... metadata) forge it on top of the endpoint's current state with
the repository's keys (see :func:`forge`), faults about transport (404, 500,
endless, slow, silent, reset) install a :class:`Rule` returning a
:class:`Response` the server executes.

``FAULTS`` maps the kebab-case fault names to :class:`FaultInfo`, including the
outcome a bare python-tuf ngclient ``Updater`` sees.

Forging signed content (:func:`forge`, re-exported here) lives in ``exporter.simulator._forge``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from exporter.simulator._forge import BELOW_THRESHOLD as BELOW_THRESHOLD
from exporter.simulator._forge import EXTRA_UNKNOWN as EXTRA_UNKNOWN
from exporter.simulator._forge import UNKNOWN_ONLY as UNKNOWN_ONLY
from exporter.simulator._forge import VALID as VALID
from exporter.simulator._forge import forge as forge
from exporter.simulator.repository import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    TOP_LEVEL_ROLES,
    RepositoryState,
    metadata_file,
    served_metadata_file,
    sign_metadata,
    utcnow,
)

if TYPE_CHECKING:
    from exporter.simulator.repository import SimulatedRepository

# ------------------------------------------------------------------ responses


@dataclass(frozen=True)
class Respond:
    """A complete HTTP response."""

    status: int = 200
    body: bytes = b""


@dataclass(frozen=True)
class Endless:
    """200 without Content-Length, streaming ``chunk`` until the client leaves."""

    chunk: bytes = b" " * 65536


@dataclass(frozen=True)
class Trickle:
    """200 with the right headers, then one body byte every ``delay`` seconds."""

    body: bytes
    delay: float


@dataclass(frozen=True)
class Silent:
    """Accept the request, never send a byte."""


@dataclass(frozen=True)
class Reset:
    """Close the connection with a TCP reset (emulates a refused connection)."""


Response = Respond | Endless | Trickle | Silent | Reset
Matcher = Callable[[str], bool]


@dataclass(frozen=True)
class Rule:
    """If ``match(file)``: answer with ``respond(file)`` instead of the file."""

    match: Matcher
    respond: Callable[[str], Response]


# ----------------------------------------------------------------------- view


class View:
    """What an endpoint serves: a base state plus overridden files and rules."""

    def __init__(self, state: RepositoryState, repo: SimulatedRepository) -> None:
        """Start from ``state`` with no overrides."""
        self.state = state
        self.repo = repo
        self.files: dict[str, bytes | None] = {}
        self.rules: list[Rule] = []

    def get(self, name: str) -> bytes | None:
        """Return the bytes served for ``name`` without rules (None: 404)."""
        if name in self.files:
            return self.files[name]
        return self.state.get(name)

    def put(self, name: str, data: bytes | None) -> None:
        """Override file ``name`` (None removes it)."""
        self.files[name] = data

    def respond(self, name: str) -> Response:
        """Return the response for a request of ``name``; first matching rule wins."""
        for rule in self.rules:
            if rule.match(name):
                return rule.respond(name)
        data = self.get(name)
        return Respond(404, b"not found\n") if data is None else Respond(200, data)

    def filename(self, role: str) -> str:
        """Return the file name of the version of ``role`` this view leads to."""
        if role == TIMESTAMP:
            return metadata_file(TIMESTAMP)
        if role == ROOT:
            version = max(self.state.root_versions())
            while self.get(metadata_file(ROOT, version + 1)) is not None:
                version += 1
            return metadata_file(ROOT, version)
        consistent = self.state.consistent_snapshot
        if role == SNAPSHOT:
            ts: Timestamp = self.load(TIMESTAMP).signed
            return served_metadata_file(SNAPSHOT, ts.snapshot_meta.version, consistent)
        snapshot: Snapshot = self.load(SNAPSHOT).signed
        return served_metadata_file(role, snapshot.meta[f"{role}.json"].version, consistent)

    def load(self, role: str) -> Metadata[Any]:
        """Parse the metadata of ``role`` this view leads to."""
        data = self.get(self.filename(role))
        if data is None:
            raise ValueError(f"{role} metadata missing in this view")
        return Metadata.from_bytes(data)

    def delegated_roles(self) -> list[str]:
        """Names of the roles delegated by top-level targets in this view."""
        targets: Targets = self.load(TARGETS).signed
        if targets.delegations is None:
            return []
        if targets.delegations.roles is not None:
            return list(targets.delegations.roles)
        assert targets.delegations.succinct_roles is not None
        return list(targets.delegations.succinct_roles.get_roles())

    def authorized_signers(self, role: str) -> tuple[list[Signer], int]:
        """Known signers authorized for ``role`` in this view, and its threshold."""
        delegator: Root | Targets
        if role in TOP_LEVEL_ROLES:
            delegator = self.load(ROOT).signed
        else:
            delegator = self.load(self.repo.delegator_of(role)).signed
        role_obj = delegator.get_delegated_role(role)
        signers = [self.repo.signer_for(k) for k in role_obj.keyids]
        return [s for s in signers if s is not None], role_obj.threshold


# --------------------------------------------------------------------- faults


@dataclass(frozen=True)
class FaultInfo:
    """Catalogue entry: what a fault does and what an ngclient Updater sees."""

    name: str
    description: str
    client_outcome: str
    params: Mapping[str, Any] = field(default_factory=dict)
    default_role: str | None = None


@dataclass
class ActiveFault:
    """A fault injected on an endpoint, with its validated parameters."""

    info: FaultInfo
    role: str | None
    params: dict[str, Any]
    frozen_state: RepositoryState | None = None
    frozen_files: dict[str, bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The fault name."""
        return self.info.name

    def select_base(self, repo: SimulatedRepository, base: RepositoryState) -> RepositoryState:
        """Return the state the endpoint serves (held back or frozen faults)."""
        if self.name == "stale-mirror":
            return repo.states[max(0, base.serial - int(self.params["states_behind"]))]
        if self.frozen_state is not None:
            return self.frozen_state
        return base

    def prepare(self, view: View) -> None:
        """Validate against the endpoint's current view and capture what is needed."""
        if self.name == "freeze":
            self.frozen_state = view.state
            scratch = View(view.state, view.repo)
            expires_in = self.params["expires_in"]
            if expires_in is not None:

                def set_expiry(ts: Timestamp) -> None:
                    ts.expires = utcnow() + _as_timedelta(expires_in)

                forge(scratch, TIMESTAMP, set_expiry)
            self.frozen_files = {k: v for k, v in scratch.files.items() if v is not None}
        elif self.name == "broken-delegation" and self.role is None:
            roles = view.delegated_roles()
            if not roles:
                raise ValueError("broken-delegation needs a delegation: call delegate() first")
            self.role = roles[0]
        elif self.name == "rollback" and _older_timestamp(view, self.params) is None:
            raise ValueError("rollback needs an older published timestamp")
        self.apply(View(view.state, view.repo))  # fail early on bad parameters

    def apply(self, view: View) -> None:
        """Install this fault into ``view``."""
        _APPLY[self.name](view, self)

    def matcher(self, scope: str = "all") -> Matcher:
        """Which files a transport fault hits (role / path / file params or scope)."""
        return _matcher(self.role, self.params.get("path"), self.params.get("file"), scope)


def _as_timedelta(value: timedelta | float) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=float(value))


def _matcher(role: str | None, path: str | None, file: str | None, scope: str) -> Matcher:
    if file is not None:
        return lambda name: name == file
    if role is not None:
        pattern = re.compile(rf"^metadata/(\d+\.)?{re.escape(role)}\.json$")
        return lambda name: pattern.match(name) is not None
    if path is not None:
        dirname, sep, base = path.rpartition("/")
        hashed = r"([0-9a-f]{64}\.)?"
        pattern = re.compile(f"^targets/{re.escape(dirname + sep)}{hashed}{re.escape(base)}$")
        return lambda name: pattern.match(name) is not None
    if scope == "all":
        return lambda name: True
    return lambda name: name.startswith(scope + "/")


def _rule(match: Matcher, response: Response | Callable[[str], Response]) -> Rule:
    if callable(response):
        return Rule(match, response)
    return Rule(match, lambda _name: response)


def _older_timestamp(view: View, params: Mapping[str, Any]) -> bytes | None:
    current = Metadata[Timestamp].from_bytes(view.state.metadata(TIMESTAMP)).signed.version
    serial = view.state.serial - int(params["states_back"])
    for state in reversed(view.repo.states[: max(serial + 1, 0)]):
        data = state.metadata(TIMESTAMP)
        if Metadata[Timestamp].from_bytes(data).signed.version < current:
            return data
    return None


def _past(signed: Any) -> None:
    signed.expires = utcnow() - timedelta(days=1)


def _forging(
    default: str, mutate: Callable[[Any], None] | None = None, signing: str = VALID
) -> Callable[[View, ActiveFault], None]:
    def apply(view: View, fault: ActiveFault) -> None:
        bump = int(fault.params.get("by", 1))
        forge(view, fault.role or default, mutate, signing=signing, bump=bump)

    return apply


def _apply_snapshot_mismatch(view: View, fault: ActiveFault) -> None:
    # timestamp lists a padded (longer) snapshot; the same snapshot is served
    # without padding: validly signed, same version, other length and hash.
    forge(view, SNAPSHOT, padding="listed in timestamp, not served")
    name = view.filename(SNAPSHOT)
    data = view.get(name)
    assert data is not None
    md = Metadata[Snapshot].from_bytes(data)
    md.unrecognized_fields.pop("x-simulator-padding", None)
    signers, _ = view.authorized_signers(SNAPSHOT)
    view.put(name, sign_metadata(md, signers))


def _apply_rollback(view: View, fault: ActiveFault) -> None:
    data = _older_timestamp(view, fault.params)
    if data is not None:
        view.put(metadata_file(TIMESTAMP), data)


def _apply_freeze(view: View, fault: ActiveFault) -> None:
    for name, data in fault.frozen_files.items():
        view.put(name, data)


def _corrupt(view: View, name: str) -> Response:
    data = view.get(name)
    if data is None:
        return Respond(404, b"not found\n")
    if not data:
        return Respond(200, b"x")
    return Respond(200, bytes([data[0] ^ 0xFF]) + data[1:])


def _trickle(view: View, name: str, delay: float) -> Response:
    data = view.get(name)
    return Respond(404, b"not found\n") if data is None else Trickle(data, delay)


def _apply_equivocation(view: View, fault: ActiveFault) -> None:
    def later(signed: Any) -> None:
        signed.expires = signed.expires + timedelta(seconds=1)

    forge(view, fault.role or TIMESTAMP, later, bump=0, chain_bump=0)


def _apply_padded_delegations(view: View, fault: ActiveFault) -> None:
    # A hostile (or broken) mirror: each delegated role's file, signatures intact, padded to
    # ``size`` bytes with a field outside ``signed``. python-tuf accepts it (the padding is
    # not signed and is an unrecognized field); without lengths in the snapshot, only the
    # client's targets_max_length stops it.
    size = int(fault.params["size"])
    for role in [fault.role] if fault.role else view.delegated_roles():
        name = view.filename(role)
        data = view.get(name)
        if data is None:
            continue
        body = data.rstrip()
        head = body[:-1] + b', "padding": "'
        view.put(name, head + b"x" * max(0, size - len(head) - 2) + b'"}')


def _apply_expiry_beyond(view: View, fault: ActiveFault) -> None:
    def far(signed: Any) -> None:
        signed.expires = utcnow() + _as_timedelta(fault.params["expires_in"])

    forge(view, fault.role or TIMESTAMP, far)


def _apply_unencodable(view: View, fault: ActiveFault) -> None:
    def with_float(signed: Any) -> None:
        signed.unrecognized_fields["x-simulator-custom"] = {"score": 0.5, "notes": "a\nb"}

    forge(view, fault.role or TARGETS, with_float, loose=True)


def _apply_corrupt_signature(view: View, fault: ActiveFault) -> None:
    # The file this view leads to for the role, each signature's last hex digit changed: the
    # same version and length, the timestamp (and snapshot) unchanged. A client that verified
    # this version before never fetches it again; one without it cached refuses it.
    name = view.filename(fault.role or SNAPSHOT)
    data = view.get(name)
    if data is None:
        raise ValueError(f"corrupt-signature: {name} is not served")
    for signature in Metadata.from_bytes(data).signatures.values():
        value = signature.signature.encode()
        if data.count(value) != 1:
            raise ValueError(f"corrupt-signature: the signature of {name} is not unique in "
                             "its bytes")
        broken = value[:-1] + (b"1" if value.endswith(b"0") else b"0")
        data = data.replace(value, broken)
    view.put(name, data)


def _apply_root_missing(view: View, fault: ActiveFault) -> None:
    version = int(fault.params["version"])
    published = view.state.root_versions()
    if version < 2 or version not in published:
        raise ValueError(f"root-missing: version {version} is not an intermediate root of this "
                         f"state (published: {', '.join(map(str, published))}; 1 is the "
                         "trusted root clients start from)")
    view.put(metadata_file(ROOT, version), None)


_ALL = "all"
_TARGETS_SCOPE = "targets"

_APPLY: dict[str, Callable[[View, ActiveFault], None]] = {
    "expired-root": _forging(ROOT, _past),
    "expired-timestamp": _forging(TIMESTAMP, _past),
    "expired-snapshot": _forging(SNAPSHOT, _past),
    "expired-targets": _forging(TARGETS, _past),
    "timestamp-missing": lambda v, f: v.rules.append(
        _rule(f.matcher(_ALL), Respond(404, b"not found\n"))
    ),
    "snapshot-mismatch": _apply_snapshot_mismatch,
    "unauthorized-key": _forging(TIMESTAMP, signing=UNKNOWN_ONLY),
    "below-threshold": _forging(TARGETS, signing=BELOW_THRESHOLD),
    "broken-delegation": _forging(TARGETS, signing=UNKNOWN_ONLY),
    "stale-mirror": lambda v, f: None,
    "rollback": _apply_rollback,
    "freeze": _apply_freeze,
    "target-hash-mismatch": lambda v, f: v.rules.append(
        _rule(f.matcher(_TARGETS_SCOPE), lambda name: _corrupt(v, name))
    ),
    "oversized-metadata": lambda v, f: v.rules.append(
        _rule(f.matcher(_ALL), Endless())
    ),
    "slow-retrieval": lambda v, f: v.rules.append(
        _rule(f.matcher(_ALL), lambda name: _trickle(v, name, float(f.params["delay"])))
    ),
    "http-500": lambda v, f: v.rules.append(
        _rule(f.matcher(_ALL), Respond(500, b"internal server error\n"))
    ),
    "malformed-json": lambda v, f: v.rules.append(
        _rule(f.matcher(_ALL), Respond(200, b'{"signed": {"_type": "time'))
    ),
    "deeply-nested-json": lambda v, f: v.rules.append(
        _rule(f.matcher(_ALL), Respond(200, b"[" * int(f.params["depth"])))
    ),
    "never-answers": lambda v, f: v.rules.append(_rule(f.matcher(_ALL), Silent())),
    "connection-refused": lambda v, f: v.rules.append(_rule(f.matcher(_ALL), Reset())),
    "equivocation": _apply_equivocation,
    "unknown-signer": _forging(TIMESTAMP, signing=EXTRA_UNKNOWN),
    "version-jump": _forging(TIMESTAMP),
    "expiry-beyond-policy": _apply_expiry_beyond,
    "padded-delegations": _apply_padded_delegations,
    "target-missing": lambda v, f: v.rules.append(
        _rule(f.matcher(_TARGETS_SCOPE), Respond(404, b"not found\n"))
    ),
    "unencodable-metadata": _apply_unencodable,
    "corrupt-signature": _apply_corrupt_signature,
    "root-missing": _apply_root_missing,
}

_TRANSPORT = {"role": None, "path": None, "file": None}
_ROLE = {"role": None}
_TARGET = {"path": None, "file": None}


def _info(name: str, description: str, outcome: str, params: Mapping[str, Any],
          default_role: str | None = None) -> FaultInfo:
    return FaultInfo(name, description, outcome, MappingProxyType(dict(params)), default_role)


FAULTS: Mapping[str, FaultInfo] = MappingProxyType({
    info.name: info
    for info in [
        _info("expired-root", "a new root version, properly signed, already expired",
              'ExpiredMetadataError "Final root.json is expired"', {}, ROOT),
        _info("expired-timestamp", "timestamp (version + 1) already expired",
              'ExpiredMetadataError "timestamp.json is expired"', {}, TIMESTAMP),
        _info("expired-snapshot", "snapshot (version + 1) already expired",
              'ExpiredMetadataError "snapshot.json is expired"', {}, SNAPSHOT),
        _info("expired-targets", "targets (or role=<delegated>) version + 1 already expired",
              'ExpiredMetadataError "New targets is expired"', _ROLE, TARGETS),
        _info("timestamp-missing", "404 for timestamp.json",
              "DownloadHTTPError 404 from refresh()", {}, TIMESTAMP),
        _info("snapshot-mismatch",
              "snapshot served with other bytes than the length/hash timestamp lists "
              "(re-signed, same version); invisible if timestamp_hashes=False",
              "LengthOrHashMismatchError from refresh()", {}, SNAPSHOT),
        _info("unauthorized-key", "timestamp (or role) signed only by a key root does not list",
              "UnsignedMetadataError", _ROLE, TIMESTAMP),
        _info("below-threshold", "targets (or role) signed by threshold - 1 authorized keys",
              "UnsignedMetadataError", _ROLE, TARGETS),
        _info("broken-delegation",
              "a delegated role (role=, default: the first one) signed by a key its "
              "delegator does not list; requires an existing delegation",
              "UnsignedMetadataError from get_targetinfo() for a target in that role",
              _ROLE, None),
        _info("stale-mirror", "endpoint serves the state states_behind publishes ago",
              "success (old but valid metadata)", {"states_behind": 2}),
        _info("rollback", "timestamp of an older state (states_back=1) served again",
              "BadVersionNumberError for a client that saw the newer timestamp; "
              "success for a fresh client", {"states_back": 1}, TIMESTAMP),
        _info("freeze",
              "endpoint stops following new states; timestamp re-signed once "
              "(version + 1) to expire after expires_in (None: kept as is)",
              "success until expiry, then ExpiredMetadataError on timestamp",
              {"expires_in": None}, TIMESTAMP),
        _info("target-hash-mismatch", "target bytes (path=, default all) differ from their hash",
              "LengthOrHashMismatchError from download_target()", _TARGET),
        _info("oversized-metadata",
              "endless response for a metadata file (role=, default timestamp)",
              "DownloadLengthMismatchError", _TRANSPORT, TIMESTAMP),
        _info("slow-retrieval", "body trickled one byte every delay seconds (default all files)",
              "SlowRetrievalError (read timeout)", {**_TRANSPORT, "delay": 5.0}),
        _info("http-500", "HTTP 500 for role=/path=/file= or every request",
              "DownloadHTTPError 500", _TRANSPORT),
        _info("malformed-json", "truncated JSON for a metadata file (role=, default timestamp)",
              "DeserializationError (a RepositoryError)", _TRANSPORT, TIMESTAMP),
        _info("deeply-nested-json",
              "depth '[' for a metadata file (role=, default timestamp; depth default 10000 "
              "fits timestamp's 16 KiB limit; use role=root for depth 100000, as snapshot "
              "and targets are capped by the lengths listed for them)",
              "DeserializationError (RecursionError inside, caught by python-tuf)",
              {**_TRANSPORT, "depth": 10_000}, TIMESTAMP),
        _info("never-answers", "connection accepted, request read, no byte ever sent",
              "SlowRetrievalError after the read timeout (urllib3 retries 3 times)",
              _TRANSPORT),
        _info("connection-refused",
              "TCP reset on every request (use closed_port() or stop() for a real refusal)",
              "DownloadError (urllib3 MaxRetryError inside)", _TRANSPORT),
        _info("equivocation",
              "timestamp (or role) re-signed with other content but the same version",
              "success (the history layer must notice)", _ROLE, TIMESTAMP),
        _info("unknown-signer",
              "timestamp (or role) version + 1 with an extra unauthorized signature",
              "success", _ROLE, TIMESTAMP),
        _info("version-jump", "timestamp (or role) version jumps by `by`",
              "success", {**_ROLE, "by": 100}, TIMESTAMP),
        _info("expiry-beyond-policy", "timestamp (or role) expires far in the future",
              "success", {**_ROLE, "expires_in": timedelta(days=3650)}, TIMESTAMP),
        _info("padded-delegations",
              "every delegated role of top-level targets (or role=) served padded to size "
              "bytes by an unsigned field, signatures intact",
              "success (python-tuf accepts the padding); DownloadLengthMismatchError past "
              "targets_max_length", {**_ROLE, "size": 1_000_000}),
        _info("target-missing", "404 for a target file (path=, default all)",
              "DownloadHTTPError 404 from download_target()", _TARGET),
        _info("unencodable-metadata",
              "targets (or role) version + 1 with a float in its signed data, signed over "
              "plain JSON (canonical JSON cannot encode it; notary #1411's custom JSON blob)",
              "SerializationError from verify_delegate (a RepositoryError)", _ROLE, TARGETS),
        _info("corrupt-signature",
              "the current snapshot (or role) served with its signatures broken: same "
              "version and length, timestamp unchanged",
              "UnsignedMetadataError for a client without that version cached (a new client; "
              "LengthOrHashMismatchError first when the timestamp lists the snapshot's hashes); "
              "success for a returning client, which does not fetch it again", _ROLE, SNAPSHOT),
        _info("root-missing",
              "404 for the intermediate root version.root.json (default 2)",
              "success for clients already at that root or later; a client starting from an "
              "older root takes the 404 as the end of the chain and fails (UnsignedMetadataError) "
              "on the first role signed by keys its root does not know", {"version": 2}),
    ]
})


def make_fault(name: str, role: str | None = None, **params: Any) -> ActiveFault:
    """Validate ``name`` and ``params`` against the catalogue; return an ActiveFault."""
    try:
        info = FAULTS[name]
    except KeyError:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None
    allowed = dict(info.params)
    if role is not None and "role" not in allowed:
        raise TypeError(f"fault {name!r} takes no role")
    unknown = set(params) - set(allowed)
    if unknown:
        raise TypeError(f"fault {name!r}: unknown parameters {sorted(unknown)}")
    allowed.pop("role", None)
    allowed.update(params)
    if role is None and allowed.get("path") is None and allowed.get("file") is None:
        role = info.default_role
    return ActiveFault(info, role, allowed)


__all__ = [
    "FAULTS",
    "ActiveFault",
    "Endless",
    "FaultInfo",
    "Reset",
    "Respond",
    "Response",
    "Rule",
    "Silent",
    "Trickle",
    "View",
    "forge",
    "make_fault",
]
