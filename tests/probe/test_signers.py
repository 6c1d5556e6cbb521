"""Active signing probes: file keys, a real PKCS#11 token (SoftHSM2), rotation, timeouts,
domain separation of the challenge, and secrets that never leak."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from securesystemslib.signer import Key, SecretsHandler, Signer
from support import Sim, softhsm
from tuf.api.metadata import Metadata
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import CanonicalJSONSerializer

from exporter import catalogue
from exporter.config import Signer as SignerConfig
from exporter.events import Event, EventKind, signer_probe_event
from exporter.probe import Prober
from exporter.probe.signers import (
    CHALLENGE_PREFIX,
    AuthorizedKeys,
    CachedKeySource,
    KeySource,
    SignerMonitor,
    SignerProbe,
    SignerReason,
    authorized_keys_from,
    make_challenge,
    probe_signer,
)
from exporter.simulator import SimulatedRepository
from exporter.simulator.repository import sign_metadata

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SECRET = "s3cr3t-PIN-9f8e7d"


def key_source(repo: SimulatedRepository) -> KeySource:
    """What the service does with the prober's verified metadata, from the simulator."""

    def keys(repository: str, role: str) -> AuthorizedKeys | None:
        delegator = repo.delegator_of(role)
        return authorized_keys_from(repo.latest.metadata(delegator), role)

    return keys


def no_metadata(repository: str, role: str) -> AuthorizedKeys | None:
    return None


def write_public_key(key: Key, path: Path) -> Path:
    path.write_text(json.dumps({"keyid": key.keyid, **key.to_dict()}), encoding="utf-8")
    return path


def config(uri: str, role: str = "timestamp", **changes: Any) -> SignerConfig:
    fields: dict[str, Any] = {"name": "ts-signer", "uri": uri, "repository": "sim",
                              "role": role, "timeout": 5.0}
    fields.update(changes)
    return SignerConfig(**fields)


def exposition(monitor: SignerMonitor) -> str:
    registry = CollectorRegistry()
    registry.register(monitor)  # the monitor is a collector of its own
    return generate_latest(registry).decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


@pytest.fixture
def repo() -> SimulatedRepository:
    repo = SimulatedRepository()
    repo.delegate("team", ["team/*"])
    repo.publish()
    return repo


# ------------------------------------------------------------------------------ file keys


def test_file_key_up_and_authorized(repo: SimulatedRepository, tmp_path: Path) -> None:
    public = repo.export_private_key("timestamp", tmp_path / "ts.pem")
    monitor = SignerMonitor([config(f"file2:{tmp_path / 'ts.pem'}")])
    result = monitor.probe("ts-signer", key_source(repo), NOW)
    assert result.up, result.message
    assert result.authorized is True
    assert result.reason is None
    assert result.keyid == public.keyid
    assert result.sign_seconds is not None and 0 < result.sign_seconds < 5
    assert result.metadata_version == 1
    event = result.to_event_fields()
    assert event["kind"] == "signer_probe"
    assert event["up"] is True and event["authorized"] is True and event["keyid"] == public.keyid
    assert json.loads(json.dumps(event)) == event
    text = exposition(monitor)
    labels = {"signer": "ts-signer", "repository": "sim", "role": "timestamp"}
    assert sample(text, "tuf_signer_up", **labels) == 1
    assert sample(text, "tuf_signer_key_authorized", **labels) == 1
    assert sample(text, "tuf_signer_sign_duration_seconds", signer="ts-signer") == pytest.approx(
        result.sign_seconds)
    assert sample(text, "tuf_signer_probes_total", signer="ts-signer", result="success") == 1
    assert sample(text, "tuf_signer_probes_total", signer="ts-signer", result="failure") == 0


def test_public_key_file_and_delegated_role(repo: SimulatedRepository, tmp_path: Path) -> None:
    public = repo.export_private_key("team", tmp_path / "team.pem")
    signer = config(f"file2:{tmp_path / 'team.pem'}", role="team",
                    public_key_file=write_public_key(public, tmp_path / "team.pub.json"))
    result = probe_signer(signer, key_source(repo), NOW)
    assert (result.up, result.authorized, result.keyid) == (True, True, public.keyid)


def test_public_key_file_without_keyid(repo: SimulatedRepository, tmp_path: Path) -> None:
    public = repo.export_private_key("timestamp", tmp_path / "ts.pem")
    pub_file = tmp_path / "ts.pub.json"
    pub_file.write_text(json.dumps(public.to_dict()), encoding="utf-8")
    result = probe_signer(config(f"file2:{tmp_path / 'ts.pem'}", public_key_file=pub_file),
                          key_source(repo), NOW)
    assert (result.up, result.authorized, result.keyid) == (True, True, public.keyid)


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_unusable_key_file_is_down_with_a_reason(
    repo: SimulatedRepository, tmp_path: Path, damage: str
) -> None:
    key_file = tmp_path / "ts.pem"
    public = repo.export_private_key("timestamp", key_file)
    monitor = SignerMonitor([
        config(f"file2:{key_file}"),
        config(f"file2:{key_file}", name="with-pub",
               public_key_file=write_public_key(public, tmp_path / "pub.json")),
    ])
    assert monitor.probe("ts-signer", key_source(repo), NOW).up
    if damage == "delete":
        key_file.unlink()
    else:
        key_file.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    for name in ("ts-signer", "with-pub"):
        result = monitor.probe(name, key_source(repo), NOW)
        assert not result.up
        assert result.reason is SignerReason.KEY_UNAVAILABLE
        assert result.message.startswith("cannot load the signer")
        if damage == "delete":
            assert str(key_file) in result.message
        event = result.to_event_fields()
        assert event["up"] is False and event["reason"] == "key_unavailable"
        assert event["message"] == result.message
    # with a public key file the authorization is still known
    assert monitor.latest("with-pub").authorized is True  # type: ignore[union-attr]
    text = exposition(monitor)
    assert sample(text, "tuf_signer_up", signer="ts-signer", repository="sim",
                  role="timestamp") == 0
    assert sample(text, "tuf_signer_probes_total", signer="ts-signer", result="failure") == 1


def test_unsupported_uri_and_unreadable_public_key(repo: SimulatedRepository,
                                                   tmp_path: Path) -> None:
    result = probe_signer(config("nosuchscheme:key"), key_source(repo), NOW)
    assert result.reason is SignerReason.KEY_UNAVAILABLE
    assert "Unsupported private key scheme" in result.message
    result = probe_signer(config("file2:/nonexistent", public_key_file=tmp_path / "none.json"),
                          key_source(repo), NOW)
    assert result.reason is SignerReason.KEY_UNAVAILABLE
    assert "public key file" in result.message


def test_no_metadata(tmp_path: Path, repo: SimulatedRepository) -> None:
    public = repo.export_private_key("timestamp", tmp_path / "ts.pem")
    result = probe_signer(config(f"file2:{tmp_path / 'ts.pem'}"), no_metadata, NOW)
    assert (result.up, result.authorized, result.reason) == (False, None,
                                                             SignerReason.NO_METADATA)
    # with its public key the signer can still be checked; authorization stays unknown
    signer = config(f"file2:{tmp_path / 'ts.pem'}",
                    public_key_file=write_public_key(public, tmp_path / "pub.json"))
    result = probe_signer(signer, no_metadata, NOW)
    assert (result.up, result.authorized, result.reason) == (True, None, None)
    monitor = SignerMonitor([signer])
    monitor.record(result)
    assert sample(exposition(monitor), "tuf_signer_key_authorized", signer="ts-signer",
                  repository="sim", role="timestamp") is None


def test_wrong_public_key_file_is_a_bad_signature(repo: SimulatedRepository,
                                                  tmp_path: Path) -> None:
    repo.export_private_key("timestamp", tmp_path / "ts.pem")
    other = repo.root_keys("snapshot")[0]
    result = probe_signer(config(f"file2:{tmp_path / 'ts.pem'}",
                                 public_key_file=write_public_key(other, tmp_path / "p.json")),
                          key_source(repo), NOW)
    assert not result.up
    assert result.reason is SignerReason.BAD_SIGNATURE
    assert result.authorized is False  # the snapshot key is not a timestamp key


# ------------------------------------------------------------------------------ rotation


def test_rotation_revokes_authorization(repo: SimulatedRepository, tmp_path: Path) -> None:
    public = repo.export_private_key("timestamp", tmp_path / "ts.pem")
    uri = f"file2:{tmp_path / 'ts.pem'}"
    monitor = SignerMonitor([
        config(uri),
        config(uri, name="with-pub",
               public_key_file=write_public_key(public, tmp_path / "pub.json")),
    ])
    keys = key_source(repo)
    for name in ("ts-signer", "with-pub"):
        assert monitor.probe(name, keys, NOW).authorized is True
    new = repo.rotate_keys("timestamp", add=1, remove=[public.keyid])
    repo.publish()
    for name in ("ts-signer", "with-pub"):
        result = monitor.probe(name, keys, NOW + timedelta(minutes=5))
        assert result.up, result.message  # the key still signs...
        assert result.authorized is False  # ...but the role no longer trusts it
        assert result.keyid == public.keyid
        assert result.metadata_version == 2
    text = exposition(monitor)
    for name in ("ts-signer", "with-pub"):
        assert sample(text, "tuf_signer_key_authorized", signer=name, repository="sim",
                      role="timestamp") == 0
    # a probe with no memory of the old key cannot tell which key it is: unknown_key
    fresh = probe_signer(config(uri), keys, NOW)
    assert (fresh.up, fresh.authorized, fresh.reason) == (False, False,
                                                          SignerReason.UNKNOWN_KEY)
    # the new key's signer is authorized
    repo.export_private_key("timestamp", tmp_path / "new.pem", keyid=new[0])
    result = probe_signer(config(f"file2:{tmp_path / 'new.pem'}"), keys, NOW)
    assert (result.up, result.authorized, result.keyid) == (True, True, new[0])


def test_authorized_keys_from_root_and_targets(repo: SimulatedRepository) -> None:
    root = authorized_keys_from(repo.latest.metadata("root"), "targets")
    assert set(root.keys) == set(repo.keyids("targets"))
    assert (root.threshold, root.version) == (2, 1)
    team = authorized_keys_from(repo.latest.metadata("targets"), "team")
    assert set(team.keys) == set(repo.keyids("team"))
    with pytest.raises(ValueError, match="nosuchrole"):
        authorized_keys_from(repo.latest.metadata("targets"), "nosuchrole")
    with pytest.raises(ValueError, match="delegates to no role"):
        authorized_keys_from(repo.latest.metadata("snapshot"), "team")


# ------------------------------------------------------------------------------ challenge


def test_challenge_is_domain_separated(repo: SimulatedRepository) -> None:
    challenge = make_challenge(NOW)
    assert challenge.startswith(CHALLENGE_PREFIX)
    assert not challenge.startswith(b"{")
    assert challenge.endswith(b" 2030-01-01T12:00:00Z")
    assert make_challenge(NOW) != challenge  # a fresh nonce every time
    with pytest.raises(DeserializationError):
        Metadata.from_bytes(challenge)
    with pytest.raises(ValueError):
        json.loads(challenge)
    # a probe signature is valid over the challenge only, never over any signed metadata
    signer = repo.signers("timestamp")[0]
    signature = signer.sign(challenge)
    signer.public_key.verify_signature(signature, challenge)
    canonical = CanonicalJSONSerializer()
    for role in repo.roles:
        payload = canonical.serialize(repo.latest.signed(role).signed)
        assert payload.startswith(b"{")
        with pytest.raises(Exception, match="verify"):
            signer.public_key.verify_signature(signature, payload)


# ------------------------------------------------------------------------------ timeout


def test_timeout_bounds_a_stuck_signer(repo: SimulatedRepository) -> None:
    release = threading.Event()

    def stuck(uri: str, key: Key, handler: SecretsHandler) -> Signer:
        release.wait(10)
        raise RuntimeError("released")

    probe = SignerProbe(config("file2:/whatever", timeout=0.3), loader=stuck)
    try:
        began = time.monotonic()
        result = probe.run(key_source(repo), NOW)
        assert time.monotonic() - began < 2
        assert (result.up, result.reason) == (False, SignerReason.TIMEOUT)
        assert result.to_event_fields()["reason"] == "timeout"
        # the worker still hangs: the next probe does not start another one
        began = time.monotonic()
        again = probe.run(key_source(repo), NOW)
        assert time.monotonic() - began < 0.2
        assert again.reason is SignerReason.TIMEOUT
        assert "still signing" in again.message
    finally:
        release.set()


# ------------------------------------------------------------------------------ secrets


def leaky_loader(uri: str, key: Key, handler: SecretsHandler) -> Signer:
    """A signer library that puts the PIN in its error message (some do)."""
    pin = handler("pin")
    raise RuntimeError(f"login failed with pin {pin}")


def test_secrets_come_from_env_or_file_and_never_leak(
    repo: SimulatedRepository, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_file = tmp_path / "pin"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    signers = [
        config("hsm:2", name="env", secret_env="TEST_SIGNER_PIN"),
        config("hsm:2", name="file", secret_file=secret_file),
    ]
    monitor = SignerMonitor(signers)
    results = []
    for signer in signers:
        probe = SignerProbe(signer, environ={"TEST_SIGNER_PIN": SECRET}, loader=leaky_loader)
        result = probe.run(key_source(repo), NOW)
        monitor.record(result)
        results.append(result)
        assert result.reason is SignerReason.KEY_UNAVAILABLE
        assert "***" in result.message
    for result in results:
        assert SECRET not in repr(result)
        assert SECRET not in json.dumps(result.to_event_fields())
    assert SECRET not in exposition(monitor)
    assert SECRET not in caplog.text


def test_a_signer_error_names_its_cause_and_still_hides_the_secret(
    repo: SimulatedRepository, caplog: pytest.LogCaptureFixture
) -> None:
    """Signer errors are worded by the one ``describe``: the cause is kept (the HSM's own
    error is often the only useful part), and scrubbing still hides the secret in it."""

    def loader(uri: str, key: Key, handler: SecretsHandler) -> Signer:
        pin = handler("pin")
        try:
            raise OSError(111, f"token refused pin {pin}")
        except OSError as exc:
            raise RuntimeError("cannot open a session") from exc

    signer = config("hsm:2", secret_env="TEST_SIGNER_PIN")
    probe = SignerProbe(signer, environ={"TEST_SIGNER_PIN": SECRET}, loader=loader)
    result = probe.run(key_source(repo), NOW)
    assert result.reason is SignerReason.KEY_UNAVAILABLE
    assert ("cannot open a session (caused by ConnectionRefusedError: [Errno 111] token "
            "refused pin ***)") in result.message
    assert SECRET not in result.message


@pytest.mark.parametrize("setup", ["unset-env", "no-secret-configured", "missing-file"])
def test_secret_missing(repo: SimulatedRepository, tmp_path: Path, setup: str) -> None:
    options: dict[str, dict[str, Any]] = {
        "unset-env": {"secret_env": "TEST_SIGNER_PIN_UNSET"},
        "no-secret-configured": {},
        "missing-file": {"secret_file": tmp_path / "no-such-pin"},
    }
    changes = options[setup]
    result = SignerProbe(config("hsm:2", **changes), environ={}, loader=leaky_loader).run(
        key_source(repo), NOW)
    assert (result.up, result.reason) == (False, SignerReason.SECRET_MISSING)
    assert "pin" in result.message


# ------------------------------------------------------------------------------ SoftHSM2


@pytest.fixture(scope="session")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[softhsm.Token]:
    reason = softhsm.unavailable()
    if reason is not None:
        pytest.skip(reason)
    saved = {name: os.environ.get(name) for name in ("SOFTHSM2_CONF", "PYKCS11LIB")}
    try:
        made = softhsm.create_token(tmp_path_factory.mktemp("softhsm"), pin=SECRET)
        os.environ["PYKCS11LIB"] = made.module
        yield made
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def hsm_public_key(token: softhsm.Token) -> Key:
    from securesystemslib.signer import HSMSigner

    _, key = HSMSigner.import_(token.hsm_keyid, token.label, lambda _name: token.pin)
    return key


def root_with_key(repo: SimulatedRepository, key: Key, role: str) -> bytes:
    """The repository's root with ``key`` added to ``role``, signed by the root keys."""
    root = repo.latest.signed("root")
    root.signed.add_key(key, role)
    root.signed.version += 1
    return sign_metadata(root, repo.signers("root"))


def test_hsm_signer_via_pkcs11(
    repo: SimulatedRepository, token: softhsm.Token, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    public = hsm_public_key(token)
    assert public.scheme == "ecdsa-sha2-nistp256"
    root = root_with_key(repo, public, "timestamp")

    def keys(repository: str, role: str) -> AuthorizedKeys:
        return authorized_keys_from(root, role)

    monkeypatch.setenv("TEST_HSM_PIN", token.pin)
    signers = [
        config(token.uri, name="hsm", secret_env="TEST_HSM_PIN"),
        config(token.uri, name="hsm-pub", secret_env="TEST_HSM_PIN",
               public_key_file=write_public_key(public, tmp_path / "hsm.pub.json")),
    ]
    monitor = SignerMonitor(signers)
    for signer in signers:
        result = monitor.probe(signer.name, keys, NOW)
        assert result.up, result.message
        assert result.authorized is True
        assert result.keyid == public.keyid
        assert result.sign_seconds is not None and result.sign_seconds > 0
    # the PIN is missing, then wrong
    monkeypatch.delenv("TEST_HSM_PIN")
    result = monitor.probe("hsm-pub", keys, NOW)
    assert (result.up, result.reason) == (False, SignerReason.SECRET_MISSING)
    assert "TEST_HSM_PIN" in result.message
    monkeypatch.setenv("TEST_HSM_PIN", "0000")
    result = monitor.probe("hsm-pub", keys, NOW)
    assert (result.up, result.reason) == (False, SignerReason.SIGN_FAILED)
    assert "PinIncorrect" in result.message
    text = exposition(monitor)
    assert sample(text, "tuf_signer_up", signer="hsm", repository="sim", role="timestamp") == 1
    assert sample(text, "tuf_signer_up", signer="hsm-pub", repository="sim",
                  role="timestamp") == 0
    for r in monitor.results():
        assert token.pin not in repr(r) and token.pin not in json.dumps(r.to_event_fields())
    assert token.pin not in text
    assert token.pin not in caplog.text


def test_hsm_key_not_authorized(repo: SimulatedRepository, token: softhsm.Token,
                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    public = hsm_public_key(token)
    monkeypatch.setenv("TEST_HSM_PIN", token.pin)
    signer = config(token.uri, secret_env="TEST_HSM_PIN",
                    public_key_file=write_public_key(public, tmp_path / "hsm.pub.json"))
    result = probe_signer(signer, key_source(repo), NOW)  # the simulator's root lacks it
    assert (result.up, result.authorized) == (True, False)


# ------------------------------------------------------------------------------ catalogue


def test_metrics_match_the_catalogue(repo: SimulatedRepository, tmp_path: Path) -> None:
    repo.export_private_key("timestamp", tmp_path / "ts.pem")
    monitor = SignerMonitor([config(f"file2:{tmp_path / 'ts.pem'}")])
    monitor.probe("ts-signer", key_source(repo), NOW)
    for metric in monitor.metrics():
        spec = catalogue.spec(metric.name if metric.type == "gauge" else metric.name + "_total")
        assert spec.subsystem is catalogue.Subsystem.SIGNER
        for s in metric.samples:
            if not s.name.endswith("_created"):
                assert tuple(s.labels) == spec.labels
    # a reload that drops the signer drops its state
    monitor.configure([])
    assert monitor.results() == []
    assert "ts-signer" not in exposition(monitor)


# ------------------------------------------------------------------------------ cache source


def test_cached_key_source_reads_the_probers_verified_cache(sim: Sim, tmp_path: Path) -> None:
    repository = sim.config()
    prober = Prober(sim.state_dir)
    assert prober.probe(repository, repository.primary).success
    metadata_dir = prober.cache_dir(repository, repository.primary) / "metadata"
    keys = CachedKeySource(lambda name: metadata_dir if name == "sim" else None)
    timestamp = keys("sim", "timestamp")
    assert timestamp is not None and set(timestamp.keys) == set(sim.repo.keyids("timestamp"))
    team = keys("sim", "team")
    assert team is not None and set(team.keys) == set(sim.repo.keyids("team"))
    assert keys("sim", "nosuchrole") is None
    assert keys("other", "timestamp") is None
    # the signer probe through it, then a rotation seen by the next repository probe
    public = sim.repo.export_private_key("timestamp", tmp_path / "ts.pem")
    monitor = SignerMonitor([config(f"file2:{tmp_path / 'ts.pem'}")])
    assert monitor.probe("ts-signer", keys, NOW).authorized is True
    sim.repo.rotate_keys("timestamp", remove=[public.keyid])
    sim.repo.publish()
    assert prober.probe(repository, repository.primary).success
    result = monitor.probe("ts-signer", keys, NOW)
    assert (result.up, result.authorized, result.metadata_version) == (True, False, 2)
    # a cache briefly cleared (cold mode) keeps the last value
    (metadata_dir / "root.json").unlink()
    again = keys("sim", "timestamp")
    assert again is not None and again.version == 2
    keys.retain(["sim"])
    assert keys("sim", "timestamp") == again
    # no signer signs for the repository any more: nothing of it is kept
    keys.retain([])
    assert keys("sim", "timestamp") is None


def test_a_signer_removed_while_probed_records_nothing(
    repo: SimulatedRepository, tmp_path: Path
) -> None:
    repo.export_private_key("timestamp", tmp_path / "ts.pem")
    monitor = SignerMonitor([config(f"file2:{tmp_path / 'ts.pem'}")])
    result = probe_signer(config(f"file2:{tmp_path / 'ts.pem'}"), key_source(repo), NOW)
    monitor.configure([])  # removed while its probe ran
    assert monitor.record(result) is False
    assert monitor.results() == []
    assert not [m for m in monitor.metrics() for s in m.samples if s.labels.get("signer")]


def test_signer_probe_event(repo: SimulatedRepository, tmp_path: Path) -> None:
    public = repo.export_private_key("timestamp", tmp_path / "ts.pem")
    signer = config(f"file2:{tmp_path / 'ts.pem'}")
    first = probe_signer(signer, key_source(repo), NOW)
    second = probe_signer(signer, key_source(repo), NOW)  # same time, same key
    event = signer_probe_event(first)
    assert event.kind is EventKind.SIGNER_PROBE
    assert (event.repository, event.role, event.keyids) == ("sim", "timestamp", (public.keyid,))
    assert event.details["signer"] == "ts-signer" and event.details["up"] is True
    assert event.versions == {"delegator": 1}
    assert first.challenge_sha256 is not None
    assert event.hashes == {"challenge.sha256": first.challenge_sha256}
    assert event.event_id != signer_probe_event(second).event_id  # every probe is its own event
    assert Event.from_document(event.to_document()) == event
    (tmp_path / "ts.pem").unlink()
    down = signer_probe_event(probe_signer(signer, key_source(repo), NOW))
    assert down.reason == "key_unavailable" and down.details["up"] is False
