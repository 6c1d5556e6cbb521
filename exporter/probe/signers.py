"""Active signing probes: can each configured signer still sign for its role, right now?

A probe loads the signer with securesystemslib (``Signer.from_priv_key_uri``), signs a fresh
**challenge** and verifies the signature with the public key the repository's current,
verified metadata authorizes for the role. securesystemslib 1.6 private key URIs:

* ``file2:<path>``: an unencrypted PEM/PKCS#8 private key file (``CryptoSigner``; the
  ``CRYPTO_SIGNER_PATH_PREFIX`` environment variable, when set, is prepended to the path).
  Encrypted key files (the old ``file:...?encrypted=true`` scheme) no longer exist in 1.6.
* ``hsm:[<keyid>][?label=<token label>]``: a PKCS#11 token (``HSMSigner``, needs the
  ``python-pkcs11`` package and the module path in ``PYKCS11LIB``); the PIN comes from the
  signer's ``secret_env`` or ``secret_file``.
* ``gcpkms:``, ``awskms:``, ``azurekms:``, ``hv:`` (Vault), ``gnupg:``, ``tkey:``: cloud KMS
  and other signers, whose credentials come from their SDK's usual environment.

The challenge is domain-separated from TUF metadata: TUF signatures are over the canonical
JSON of a ``signed`` object, which always starts with ``{``; the challenge starts with
:data:`CHALLENGE_PREFIX` (``tuf-exporter signer probe v1`` and a NUL byte), then a random
nonce and the time. A probe signature can therefore never be replayed as a metadata signature.

Secrets (PINs, passphrases) are read from the environment or a file only when the signer asks
for them, are never logged, and are scrubbed from every message a result carries.

The keys a role is authorized to sign with (read from verified metadata or a public key file,
matched by key material) are in ``exporter.probe._keys``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets as _random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from prometheus_client.core import Metric
from securesystemslib.exceptions import KeyMismatchError, UnverifiedSignatureError
from securesystemslib.signer import Key, SecretsHandler, Signature, Signer

from exporter.catalogue import family
from exporter.config import model as config
from exporter.probe._keys import AuthorizedKeys as AuthorizedKeys
from exporter.probe._keys import CachedKeySource as CachedKeySource
from exporter.probe._keys import KeySource as KeySource
from exporter.probe._keys import _same_key
from exporter.probe._keys import authorized_keys_from as authorized_keys_from
from exporter.probe._keys import load_public_key as load_public_key
from exporter.probe._keys import match_authorized as match_authorized
from exporter.probe.classify import describe
from exporter.probe.results import rfc3339

logger = logging.getLogger(__name__)

#: What every challenge starts with. No canonical JSON (and so no TUF ``signed`` payload)
#: can start with these bytes.
CHALLENGE_PREFIX = b"tuf-exporter signer probe v1\x00"

#: The ``kind`` field of signer probe log lines: the kind of their events (see
#: :func:`exporter.events.model.signer_probe_event`).
EVENT_KIND = "signer_probe"

_MAX_MESSAGE = 300


class SignerReason(StrEnum):
    """Why a signing probe failed (a fixed set, also used in events)."""

    KEY_UNAVAILABLE = "key_unavailable"  #: the private key cannot be loaded or reached
    SECRET_MISSING = "secret_missing"  # noqa: S105 - a reason, not a password
    SIGN_FAILED = "sign_failed"  #: the signer was loaded but signing raised (wrong PIN, KMS...)
    BAD_SIGNATURE = "bad_signature"  #: a signature came back but does not verify
    NO_METADATA = "no_metadata"  #: no public key: no ``public_key_file`` and no metadata yet
    UNKNOWN_KEY = "unknown_key"  #: no ``public_key_file`` and no authorized key matches
    TIMEOUT = "timeout"  #: loading and signing took longer than the signer's ``timeout``


def make_challenge(now: datetime, nonce: bytes | None = None) -> bytes:
    """A fresh challenge: :data:`CHALLENGE_PREFIX`, 16 random bytes in hex, a space, the time.

    ``nonce`` is for tests; by default it is 16 bytes from the system's CSPRNG.
    """
    nonce = _random.token_bytes(16) if nonce is None else nonce
    moment = rfc3339(now.replace(microsecond=0)) or ""
    return CHALLENGE_PREFIX + nonce.hex().encode("ascii") + b" " + moment.encode("ascii")


@dataclass(frozen=True)
class SignerResult:
    """The outcome of one signing probe."""

    signer: str
    repository: str
    role: str
    started_at: datetime
    #: True when the signer produced a signature that verifies over the challenge.
    up: bool
    #: The signer's key is among the role's current keys; None while unknown (no metadata).
    authorized: bool | None
    #: The key the signer signed with (the authorized keyid when it matched one).
    keyid: str | None = None
    reason: SignerReason | None = None
    #: Human-readable; never contains a secret.
    message: str = ""
    #: How long the successful ``sign()`` call took (the wait, on a timeout).
    sign_seconds: float | None = None
    #: The whole probe: loading the signer, signing and verifying.
    duration_seconds: float = 0.0
    #: Version of the delegating metadata the authorization was checked against.
    metadata_version: int | None = None
    #: SHA-256 (hex) of the challenge signed: unique per probe (it holds a random nonce).
    challenge_sha256: str | None = None

    def to_event_fields(self) -> dict[str, Any]:
        """A JSON-ready description of the probe for the event pipeline."""
        return {
            "kind": EVENT_KIND,
            "time": rfc3339(self.started_at),
            "signer": self.signer,
            "repository": self.repository,
            "role": self.role,
            "keyid": self.keyid,
            "up": self.up,
            "authorized": self.authorized,
            "reason": None if self.reason is None else str(self.reason),
            "message": self.message,
            "duration": round(self.duration_seconds, 6),
            "sign_duration": None if self.sign_seconds is None else round(self.sign_seconds, 6),
            "metadata_version": self.metadata_version,
            "challenge_sha256": self.challenge_sha256,
        }


class SecretMissingError(Exception):
    """The signer asked for a secret that is not configured, not set or not readable."""


class _Secrets:
    """The secrets handler given to securesystemslib: reads the signer's secret on demand.

    Every value it returns is remembered so that messages can be scrubbed of it.
    """

    def __init__(self, signer: config.Signer, environ: Mapping[str, str]) -> None:
        self._signer = signer
        self._environ = environ
        self.seen: list[str] = []

    def __call__(self, name: str) -> str:
        value = self._read(name)
        self.seen.append(value)
        return value

    def _read(self, name: str) -> str:
        signer = self._signer
        if signer.secret_env is not None:
            value = self._environ.get(signer.secret_env)
            if value:
                return value
            if signer.secret_file is None:
                raise SecretMissingError(
                    f"the signer asks for its {name}, but the environment variable "
                    f"{signer.secret_env} is not set"
                )
        if signer.secret_file is not None:
            try:
                text = signer.secret_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
                raise SecretMissingError(
                    f"the signer asks for its {name}, but the secret file {signer.secret_file} "
                    f"cannot be read: {detail}"
                ) from None
            value = text.rstrip("\r\n")
            if not value:
                raise SecretMissingError(f"the secret file {signer.secret_file} is empty")
            return value
        raise SecretMissingError(
            f"the signer asks for its {name}, but neither secret_env nor secret_file is configured"
        )

    def scrub(self, text: str) -> str:
        """``text`` with every secret handed out replaced by ``***``, shortened."""
        for value in self.seen:
            text = text.replace(value, "***")
        return text[:_MAX_MESSAGE]


_MISMATCH_PREFIXES = ("invalid ", "unsupported scheme", "unsupported public key", "bad curve")


def _is_mismatch(exc: BaseException) -> bool:
    """True when loading failed only because the public key is not the signer's key."""
    if isinstance(exc, KeyMismatchError):
        return True
    return isinstance(exc, ValueError) and str(exc).startswith(_MISMATCH_PREFIXES)


@dataclass
class _Attempt:
    """What the worker thread found (filled in by the worker, read after it finished)."""

    key: Key | None = None
    signature_ok: bool = False
    reason: SignerReason | None = None
    message: str = ""
    sign_seconds: float | None = None
    done: threading.Event = field(default_factory=threading.Event)


SignerLoader = Callable[[str, Key, SecretsHandler], Signer]


def _default_loader(uri: str, key: Key, handler: SecretsHandler) -> Signer:
    return Signer.from_priv_key_uri(uri, key, handler)


class SignerProbe:
    """Probes one configured signer; keeps what it learned between probes.

    Without a ``public_key_file`` the probe tries every key the role authorizes and remembers
    the one that matched, so after a key rotation it can still tell "this signer works, but
    its key is no longer authorized". At most one worker thread per signer: while a stuck
    sign call (a hung HSM or KMS) still runs, further probes report ``timeout`` at once.
    Not re-entrant: run one probe of a signer at a time (the scheduler's job).
    """

    def __init__(
        self,
        signer: config.Signer,
        *,
        environ: Mapping[str, str] | None = None,
        loader: SignerLoader = _default_loader,
    ) -> None:
        """``environ`` defaults to ``os.environ``; ``loader`` to ``Signer.from_priv_key_uri``."""
        self.signer = signer
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._loader = loader
        self._known_key: Key | None = None
        self._worker: threading.Thread | None = None
        self._worker_started = 0.0

    def run(self, keys: KeySource, now: datetime) -> SignerResult:
        """Probe the signer once (blocks at most about ``signer.timeout`` seconds)."""
        signer = self.signer
        started = time.monotonic()
        authorized = self._authorized(keys)
        file_key, file_error = self._file_key()
        candidates = self._candidates(file_key, authorized)
        base: dict[str, Any] = {
            "signer": signer.name, "repository": signer.repository, "role": signer.role,
            "started_at": now,
            "metadata_version": None if authorized is None else authorized.version,
        }

        def result(**fields: Any) -> SignerResult:
            fields.setdefault("duration_seconds", time.monotonic() - started)
            return SignerResult(**base, **fields)

        if file_error is not None:
            return result(up=False, authorized=None, reason=SignerReason.KEY_UNAVAILABLE,
                          message=file_error)
        if not candidates:
            reason = SignerReason.NO_METADATA if authorized is None else SignerReason.UNKNOWN_KEY
            message = ("no public_key_file and no verified metadata for the role yet"
                       if authorized is None else
                       f"no public_key_file and {signer.role} authorizes no key")
            return result(up=False, authorized=None, reason=reason, message=message)
        if self._worker is not None and self._worker.is_alive():
            stuck = time.monotonic() - self._worker_started
            return result(up=False, authorized=self._authorization(file_key, authorized),
                          keyid=None if file_key is None else file_key.keyid,
                          reason=SignerReason.TIMEOUT,
                          message=f"the previous probe is still signing after {stuck:.1f} s")
        attempt = _Attempt()
        challenge = make_challenge(now)
        base["challenge_sha256"] = hashlib.sha256(challenge).hexdigest()
        worker = threading.Thread(
            target=self._attempt, args=(candidates, file_key is None, challenge, attempt),
            name=f"signer-probe-{signer.name}", daemon=True,
        )
        self._worker, self._worker_started = worker, time.monotonic()
        worker.start()
        if not attempt.done.wait(signer.timeout):
            likely = file_key or self._known_key
            return result(up=False, authorized=self._authorization(likely, authorized),
                          keyid=None if likely is None else likely.keyid,
                          reason=SignerReason.TIMEOUT, sign_seconds=signer.timeout,
                          message=f"no signature within {signer.timeout:g} s")
        key = attempt.key
        if attempt.signature_ok and file_key is None:
            self._known_key = key
        is_authorized = self._authorization(key, authorized)
        if attempt.reason is SignerReason.UNKNOWN_KEY:
            is_authorized = False  # it signs, but with none of the role's keys
        return result(
            up=attempt.signature_ok,
            authorized=is_authorized,
            keyid=None if key is None else key.keyid,
            reason=attempt.reason,
            message=attempt.message,
            sign_seconds=attempt.sign_seconds,
        )

    # ---------------------------------------------------------------------------- helpers

    def _authorized(self, keys: KeySource) -> AuthorizedKeys | None:
        try:
            return keys(self.signer.repository, self.signer.role)
        except Exception as exc:  # noqa: BLE001 - a broken key source must not kill the probe
            logger.warning("signer %s: cannot read the authorized keys: %s",
                           self.signer.name, describe(exc))
            return None

    def _file_key(self) -> tuple[Key | None, str | None]:
        path = self.signer.public_key_file
        if path is None:
            return None, None
        try:
            return load_public_key(path), None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"cannot read the public key file {path}: {describe(exc)}"[
                :_MAX_MESSAGE]

    def _candidates(self, file_key: Key | None, authorized: AuthorizedKeys | None) -> list[Key]:
        """Public keys to try, in order: the configured one, else the remembered one first and
        then every authorized key. An authorized key with the same material replaces a key."""
        if file_key is not None:
            match = match_authorized(file_key, authorized) if authorized else None
            return [match or file_key]
        out: list[Key] = []
        if self._known_key is not None:
            known = self._known_key
            match = match_authorized(known, authorized) if authorized else None
            out.append(match or known)
        if authorized is not None:
            out.extend(k for _, k in sorted(authorized.keys.items())
                       if not any(_same_key(k, o) for o in out))
        return out

    @staticmethod
    def _authorization(key: Key | None, authorized: AuthorizedKeys | None) -> bool | None:
        if key is None or authorized is None:
            return None
        return match_authorized(key, authorized) is not None

    def _attempt(
        self, candidates: list[Key], guessing: bool, challenge: bytes, attempt: _Attempt
    ) -> None:
        """Worker thread: load, sign and verify with each candidate until one verifies.

        ``guessing``: the candidates are the role's keys, not the signer's configured key, so
        a key that does not fit only means "not this one".
        """
        handler = _Secrets(self.signer, self._environ)
        try:
            if not guessing:
                attempt.key = candidates[0]
            failure: tuple[SignerReason, str] | None = None
            for key in candidates:
                outcome = self._try_key(key, challenge, handler, attempt)
                if outcome is None:
                    attempt.key, attempt.signature_ok = key, True
                    attempt.message = f"signed with {key.keyid}"
                    return
                if outcome[0] is SignerReason.UNKNOWN_KEY:
                    failure = failure or outcome
                    continue
                failure = outcome  # the same for every candidate: stop here
                break
            assert failure is not None
            reason, message = failure
            if reason is SignerReason.UNKNOWN_KEY and not guessing:
                reason = SignerReason.BAD_SIGNATURE
            elif reason is SignerReason.UNKNOWN_KEY:
                message = "the signer's key is none of the keys the role authorizes"
            attempt.reason = reason
            attempt.message = handler.scrub(message)
        except BaseException as exc:  # noqa: BLE001 - never let a worker die silently
            attempt.reason = SignerReason.SIGN_FAILED
            attempt.message = handler.scrub(describe(exc))
        finally:
            attempt.done.set()

    def _try_key(
        self, key: Key, challenge: bytes, handler: _Secrets, attempt: _Attempt
    ) -> tuple[SignerReason, str] | None:
        """Sign ``challenge`` assuming ``key`` is the signer's public key; None when the
        signature verifies, else the reason (UNKNOWN_KEY: this key is not the signer's)."""
        try:
            loaded = self._loader(self.signer.uri, key, handler)
        except SecretMissingError as exc:
            return SignerReason.SECRET_MISSING, str(exc)
        except Exception as exc:  # noqa: BLE001 - every signer raises its own errors
            if _is_mismatch(exc):
                return SignerReason.UNKNOWN_KEY, describe(exc)
            return SignerReason.KEY_UNAVAILABLE, f"cannot load the signer: {describe(exc)}"
        began = time.monotonic()
        try:
            signature: Signature = loaded.sign(challenge)
        except SecretMissingError as exc:
            return SignerReason.SECRET_MISSING, str(exc)
        except (OSError, ValueError) as exc:
            return SignerReason.KEY_UNAVAILABLE, f"cannot reach the key: {describe(exc)}"
        except Exception as exc:  # noqa: BLE001
            return SignerReason.SIGN_FAILED, f"signing failed: {describe(exc)}"
        finally:
            attempt.sign_seconds = time.monotonic() - began
        try:
            key.verify_signature(signature, challenge)
        except UnverifiedSignatureError:
            return SignerReason.UNKNOWN_KEY, f"the signature does not verify with {key.keyid}"
        return None


def probe_signer(
    signer: config.Signer,
    keys: KeySource,
    now: datetime | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> SignerResult:
    """Probe ``signer`` once, with no memory of earlier probes (see :class:`SignerProbe`)."""
    return SignerProbe(signer, environ=environ).run(keys, now or datetime.now(UTC))


class SignerMonitor:
    """Runs the probes of the configured signers and keeps their latest results and counters.

    Thread safe. A prometheus_client collector (:meth:`collect`, registered by the service):
    it yields the ``tuf_signer_*`` families of the active probes (``tuf_signer_cadence_ok``
    comes from :class:`exporter.history.cadence.CadenceTracker`).
    """

    def __init__(self, signers: Iterable[config.Signer] = (), *,
                 environ: Mapping[str, str] | None = None) -> None:
        """Start with the signers of the configuration (see :meth:`configure`)."""
        self._lock = threading.Lock()
        self._environ = environ
        self._probes: dict[str, SignerProbe] = {}
        self._latest: dict[str, SignerResult] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self.configure(signers)

    def configure(self, signers: Iterable[config.Signer]) -> None:
        """Apply a (re)loaded configuration: new signers get counters at 0, removed signers'
        state is dropped, and a changed signer starts afresh."""
        wanted = {s.name: s for s in signers}
        with self._lock:
            for name in list(self._probes):
                if name not in wanted or self._probes[name].signer != wanted[name]:
                    del self._probes[name]
                    self._latest.pop(name, None)
            for name, signer in wanted.items():
                self._probes.setdefault(name, SignerProbe(signer, environ=self._environ))
                for outcome in ("success", "failure"):
                    self._counts[(name, outcome)] += 0
            for key in [k for k in self._counts if k[0] not in wanted]:
                del self._counts[key]

    def probe(self, name: str, keys: KeySource, now: datetime | None = None) -> SignerResult:
        """Probe the configured signer ``name`` now, record and return the result."""
        with self._lock:
            probe = self._probes[name]
        result = probe.run(keys, now or datetime.now(UTC))
        self.record(result)
        return result

    def record(self, result: SignerResult) -> bool:
        """Keep ``result`` as the latest of its signer and count it; False (nothing kept)
        when the signer is no longer configured (removed while it was probed)."""
        with self._lock:
            if result.signer not in self._probes:
                return False
            self._latest[result.signer] = result
            self._counts[(result.signer, "success" if result.up else "failure")] += 1
        if result.up:
            logger.info("signer %s: up (key %s, authorized %s, %.3f s)", result.signer,
                        result.keyid, result.authorized, result.sign_seconds or 0.0)
        else:
            logger.warning("signer %s: down (%s): %s", result.signer, result.reason,
                           result.message)
        return True

    def configured(self, name: str) -> bool:
        """Whether signer ``name`` is configured now."""
        with self._lock:
            return name in self._probes

    def latest(self, name: str) -> SignerResult | None:
        """The latest result of signer ``name``."""
        with self._lock:
            return self._latest.get(name)

    def results(self) -> list[SignerResult]:
        """The latest result of every signer probed so far."""
        with self._lock:
            return list(self._latest.values())

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector interface: the families of :meth:`metrics`."""
        yield from self.metrics()

    def metrics(self) -> Iterator[Metric]:
        """The ``tuf_signer_*`` families of the active probes, built from the catalogue."""
        with self._lock:
            latest = list(self._latest.values())
            counts = dict(self._counts)
        up = family("tuf_signer_up")
        duration = family("tuf_signer_sign_duration_seconds")
        authorized = family("tuf_signer_key_authorized")
        probes = family("tuf_signer_probes_total")
        for r in sorted(latest, key=lambda r: r.signer):
            labels = [r.signer, r.repository, r.role]
            up.add_metric(labels, 1 if r.up else 0)
            if r.sign_seconds is not None:
                duration.add_metric([r.signer], r.sign_seconds)
            if r.authorized is not None:
                authorized.add_metric(labels, 1 if r.authorized else 0)
        for (name, outcome), value in sorted(counts.items()):
            probes.add_metric([name, outcome], value)
        yield from (up, duration, authorized, probes)
