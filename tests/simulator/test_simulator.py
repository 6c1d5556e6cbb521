"""Tests of the simulated TUF repository, checked with a bare python-tuf ngclient Updater."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.signer import Signer
from tuf.api import exceptions as exc
from tuf.api.metadata import Metadata
from tuf.api.serialization import DeserializationError, SerializationError
from tuf.api.serialization.json import CanonicalJSONSerializer
from tuf.ngclient import Updater
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from exporter.simulator import (
    FAULTS,
    KEY_SCHEMES,
    SimulatedRepository,
    SimulatorServer,
    closed_port,
)
from exporter.simulator.repository import generate_signer

TIMEOUT = 0.4  # client socket timeout for the slow faults


@pytest.fixture
def repo() -> SimulatedRepository:
    r = SimulatedRepository()
    r.add_target("file.txt", b"hello world")
    r.add_target("dir/sub.bin", b"\x00\x01\x02")
    r.delegate("delegated", ["delegated/*"])
    r.add_target("delegated/one.txt", b"one", role="delegated")
    r.publish()
    return r


@pytest.fixture
def server(repo: SimulatedRepository) -> Iterator[SimulatorServer]:
    with SimulatorServer(repo) as s:
        s.add_mirror("mirror")
        yield s


def make_updater(
    server: SimulatorServer,
    workdir: Path,
    endpoint: str = "primary",
    *,
    timeout: float = 5,
    warm: bool = False,
    port: int | None = None,
    root: bytes | None = None,
) -> Updater:
    """A bare ngclient Updater; ``warm`` re-uses the cache already in ``workdir``, else it
    starts from ``root`` (default: the repository's version 1)."""
    meta = workdir / "metadata"
    targets = workdir / "targets"
    meta.mkdir(parents=True, exist_ok=True)
    targets.mkdir(parents=True, exist_ok=True)
    md_url, t_url = server.endpoint_urls(endpoint)
    if port is not None:
        md_url = md_url.replace(f":{server.port}/", f":{port}/")
    return Updater(
        str(meta),
        md_url,
        str(targets),
        t_url,
        fetcher=Urllib3Fetcher(socket_timeout=timeout),  # type: ignore[arg-type]
        bootstrap=None if warm else root or server.repo.trusted_root_bytes(),
    )


def full_update(updater: Updater, path: str = "file.txt") -> bytes:
    """refresh(), get_targetinfo(path), download_target(); return the target bytes."""
    updater.refresh()
    info = updater.get_targetinfo(path)
    assert info is not None, path
    return Path(updater.download_target(info)).read_bytes()


def timestamp_md(data: bytes) -> Metadata[Any]:
    return Metadata.from_bytes(data)


# ----------------------------------------------------------------- repository


def test_clean_repository_is_valid(server: SimulatorServer, tmp_path: Path) -> None:
    assert full_update(make_updater(server, tmp_path)) == b"hello world"
    u = make_updater(server, tmp_path / "b", "mirror")
    assert full_update(u, "delegated/one.txt") == b"one"
    assert full_update(make_updater(server, tmp_path / "c"), "dir/sub.bin") == b"\x00\x01\x02"
    counts = server.requests("primary")
    assert counts["metadata/2.root.json"] == 2
    assert counts["metadata/timestamp.json"] == 2
    assert server.request_count("mirror", "metadata/1.delegated.json") == 1
    assert any(k.startswith("targets/dir/") and k.endswith(".sub.bin") for k in counts)


def test_state_layout_and_defaults(repo: SimulatedRepository) -> None:
    state = repo.latest
    assert state.serial == 1 and len(repo.states) == 2
    assert {"metadata/1.root.json", "metadata/timestamp.json", "metadata/2.snapshot.json",
            "metadata/2.targets.json", "metadata/1.delegated.json"} <= set(state)
    ts = timestamp_md(state["metadata/timestamp.json"]).signed
    assert ts.snapshot_meta.length and "sha256" in ts.snapshot_meta.hashes
    snap = state.signed("snapshot").signed
    assert snap.meta["delegated.json"].version == 1 and snap.meta["delegated.json"].hashes is None
    root = state.signed("root").signed
    assert root.consistent_snapshot
    assert root.roles["targets"].threshold == 2 and len(root.roles["targets"].keyids) == 2
    now = datetime.now(UTC)
    for role, days in [("root", 365), ("targets", 90), ("snapshot", 7), ("timestamp", 1)]:
        expires = state.signed(role).signed.expires
        assert abs(expires - (now + timedelta(days=days))) < timedelta(minutes=1)
    assert repo.target_filename("dir/sub.bin").startswith("targets/dir/")
    # states are immutable snapshots: a later publish does not change them
    repo.add_target("new.txt", b"new")
    repo.publish()
    assert repo.target_filename("new.txt") not in state


def test_publish_resign_and_version_jump(repo: SimulatedRepository) -> None:
    v = dict(repo.latest.versions)
    s = repo.resign("timestamp")
    assert s.versions["timestamp"] == v["timestamp"] + 1
    assert s.versions["snapshot"] == v["snapshot"] and s.versions["targets"] == v["targets"]
    s = repo.resign("delegated")
    assert s.versions["delegated"] == v["delegated"] + 1
    assert s.versions["snapshot"] == v["snapshot"] + 1 and s.versions["targets"] == v["targets"]
    repo.bump_version("targets", by=50)
    s = repo.publish()
    assert s.versions["targets"] == v["targets"] + 50


def test_repository_level_expiry_and_extra_signer(
    repo: SimulatedRepository, server: SimulatorServer, tmp_path: Path
) -> None:
    repo.publish(extra_signers=["timestamp", "targets"])
    md = timestamp_md(repo.latest["metadata/timestamp.json"])
    assert repo.unknown_signer.public_key.keyid in md.signatures
    assert full_update(make_updater(server, tmp_path / "a")) == b"hello world"
    far = datetime(2100, 1, 1, tzinfo=UTC)
    repo.set_expiry("snapshot", far)
    assert repo.publish().signed("snapshot").signed.expires == far
    repo.set_expiry("timestamp", timedelta(hours=-1))
    repo.publish()
    with pytest.raises(exc.ExpiredMetadataError, match="timestamp"):
        make_updater(server, tmp_path / "b").refresh()


def test_key_rotation(repo: SimulatedRepository, server: SimulatorServer, tmp_path: Path) -> None:
    u = make_updater(server, tmp_path)
    full_update(u)
    old_root = repo.keyids("root")
    new = repo.rotate_keys("root", remove=1)
    repo.rotate_keys("timestamp", remove=1)
    repo.rotate_keys("targets", add=1, remove=[repo.keyids("targets")[0]], threshold=2)
    repo.rotate_keys("delegated", add=2, remove=1, threshold=2)
    state = repo.publish()
    assert state.versions["root"] == 2
    root_md = state.signed("root")
    assert set(old_root) | set(new) <= set(root_md.signatures)
    assert root_md.signed.roles["root"].keyids == new
    # a warm client follows the rotation, and a fresh one bootstraps through it
    assert full_update(make_updater(server, tmp_path, warm=True), "delegated/one.txt") == b"one"
    assert full_update(make_updater(server, tmp_path / "fresh")) == b"hello world"
    assert state.root_versions() == [1, 2]


@pytest.mark.parametrize("scheme", [s for s in KEY_SCHEMES if s != "ed25519"])
def test_key_rotation_to_another_scheme(repo: SimulatedRepository, server: SimulatorServer,
                                        tmp_path: Path, scheme: str) -> None:
    """rotate_keys(scheme=...): root v2 lists the new timestamp key with that scheme (and the
    key type it implies), the timestamp is signed by it alone, and python-tuf (which verifies
    every scheme of KEY_SCHEMES) follows the rotation, warm and fresh."""
    full_update(make_updater(server, tmp_path))
    old = repo.keyids("timestamp")
    (new,) = repo.rotate_keys("timestamp", add=1, remove=1, scheme=scheme)
    state = repo.publish()
    assert state.versions["root"] == 2
    root = state.signed("root").signed
    assert root.roles["timestamp"].keyids == [new]
    key = root.keys[new]
    assert key.scheme == scheme
    assert key.keytype == ("rsa" if scheme.startswith("rsa") else "ecdsa")
    assert repo.root_keys("timestamp") == [key]
    timestamp = state.signed("timestamp")
    assert list(timestamp.signatures) == [new] and not set(old) & set(timestamp.signatures)
    root.verify_delegate("timestamp", CanonicalJSONSerializer().serialize(timestamp.signed),
                         timestamp.signatures)
    # the new key is in the keyring like every other (exported, re-signed with)
    assert repo.signer_for(new) is not None
    assert full_update(make_updater(server, tmp_path, warm=True)) == b"hello world"
    assert full_update(make_updater(server, tmp_path / "fresh")) == b"hello world"


def test_key_rotation_to_an_unknown_scheme_changes_nothing(repo: SimulatedRepository) -> None:
    before = repo.keyids("timestamp")
    with pytest.raises(ValueError, match=r"unknown key scheme 'rsa-pkcs1v15-sha512'.*ed25519"):
        repo.rotate_keys("timestamp", remove=1, scheme="rsa-pkcs1v15-sha512")
    assert repo.keyids("timestamp") == before
    assert repo.publish().versions["root"] == 1


def test_generate_signer_makes_every_scheme() -> None:
    for scheme in KEY_SCHEMES:
        signer = generate_signer(scheme)
        assert signer.public_key.scheme == scheme
        signer.public_key.verify_signature(signer.sign(b"payload"), b"payload")
    p384 = load_pem_public_key(
        generate_signer("ecdsa-sha2-nistp384").public_key.keyval["public"].encode())
    assert isinstance(p384, ec.EllipticCurvePublicKey) and p384.curve.name == "secp384r1"
    with pytest.raises(ValueError, match="unknown key scheme"):
        generate_signer("ed448")


def test_export_private_key(repo: SimulatedRepository, tmp_path: Path) -> None:
    pem = tmp_path / "timestamp.pem"
    key = repo.export_private_key("timestamp", pem)
    assert key.keyid in repo.keyids("timestamp")
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    signer = Signer.from_priv_key_uri(f"file2:{pem}", key)
    key.verify_signature(signer.sign(b"payload"), b"payload")


@pytest.mark.parametrize("succinct", [True, False])
def test_hash_bins(tmp_path: Path, succinct: bool) -> None:
    repo = SimulatedRepository()
    bins = repo.delegate_hash_bins(16, succinct=succinct)
    assert bins[0] == "bin-0" and len(bins) == 16
    repo.add_targets({f"pkg/{i}.txt": str(i).encode() for i in range(200)})
    repo.publish()
    with SimulatorServer(repo) as server:
        u = make_updater(server, tmp_path)
        assert full_update(u, "pkg/7.txt") == b"7"
        server.reset_requests()
        repo.add_target("pkg/7.txt", b"seven")
        repo.publish()
        assert full_update(make_updater(server, tmp_path, warm=True), "pkg/7.txt") == b"seven"
        fetched = [k for k in server.requests() if k.startswith("metadata/") and ".bin-" in k]
        assert len(fetched) == 1


def test_broken_delegation_in_hash_bins_and_remove_target(tmp_path: Path) -> None:
    repo = SimulatedRepository()
    repo.delegate_hash_bins(8, succinct=True)
    paths = [f"p/{i}" for i in range(40)]
    repo.add_targets({p: p.encode() for p in paths})
    repo.publish()
    in_bin3 = next(p for p in paths if repo.role_for_target(p) == "bin-3")
    with SimulatorServer(repo) as server:
        server.inject("broken-delegation", role="bin-3")
        with pytest.raises(exc.UnsignedMetadataError, match="bin-3"):
            make_updater(server, tmp_path / "a").get_targetinfo(in_bin3)
        server.clear()
        repo.remove_target(in_bin3)
        repo.publish()
        u = make_updater(server, tmp_path / "b")
        assert u.get_targetinfo(in_bin3) is None
        assert repo.target_filename(paths[0]) in repo.latest


def test_large_hash_bin_repository_is_fast() -> None:
    start = time.monotonic()
    repo = SimulatedRepository()
    repo.delegate_hash_bins(4096, succinct=True)
    repo.add_targets({f"pkg/file-{i}.tar.gz": i.to_bytes(4, "big") for i in range(100_000)})
    state = repo.publish()
    assert time.monotonic() - start < 30
    assert len([k for k in state if k.startswith("metadata/1.bin-")]) == 4096
    start = time.monotonic()
    repo.add_target("pkg/one-more", b"x")
    state = repo.publish()
    assert time.monotonic() - start < 5
    assert sum(1 for k in state if k.startswith("metadata/2.bin-")) == 1


# --------------------------------------------------------------------- faults

FAILING: list[tuple[str, dict[str, Any], str, type[Exception], str | None]] = [
    # fault, inject kwargs, step (refresh / info:<path> / download:<path>), error, message
    ("expired-root", {}, "refresh", exc.ExpiredMetadataError, "Final root.json is expired"),
    ("expired-timestamp", {}, "refresh", exc.ExpiredMetadataError, "timestamp.json is expired"),
    ("expired-snapshot", {}, "refresh", exc.ExpiredMetadataError, "snapshot.json is expired"),
    ("expired-targets", {}, "refresh", exc.ExpiredMetadataError, "New targets is expired"),
    ("expired-targets", {"role": "delegated"}, "info:delegated/one.txt",
     exc.ExpiredMetadataError, "New delegated is expired"),
    ("timestamp-missing", {}, "refresh", exc.DownloadHTTPError, "404"),
    ("snapshot-mismatch", {}, "refresh", exc.LengthOrHashMismatchError, None),
    ("unauthorized-key", {}, "refresh", exc.UnsignedMetadataError, "timestamp"),
    ("unauthorized-key", {"role": "snapshot"}, "refresh", exc.UnsignedMetadataError, "snapshot"),
    ("below-threshold", {}, "refresh", exc.UnsignedMetadataError, "targets was signed by 1/2"),
    ("broken-delegation", {}, "info:delegated/one.txt", exc.UnsignedMetadataError, "delegated"),
    ("target-hash-mismatch", {}, "download:file.txt", exc.LengthOrHashMismatchError, None),
    ("target-missing", {"path": "dir/sub.bin"}, "download:dir/sub.bin",
     exc.DownloadHTTPError, "404"),
    ("oversized-metadata", {}, "refresh", exc.DownloadLengthMismatchError, "16384"),
    ("oversized-metadata", {"role": "targets"}, "refresh", exc.DownloadLengthMismatchError, None),
    ("slow-retrieval", {"delay": 3.0}, "refresh", exc.SlowRetrievalError, None),
    ("http-500", {}, "refresh", exc.DownloadHTTPError, "500"),
    ("http-500", {"role": "snapshot"}, "refresh", exc.DownloadHTTPError, "500"),
    ("http-500", {"path": "file.txt"}, "download:file.txt", exc.DownloadHTTPError, "500"),
    ("malformed-json", {}, "refresh", DeserializationError, None),
    ("malformed-json", {"role": "root"}, "refresh", DeserializationError, None),
    ("deeply-nested-json", {}, "refresh", DeserializationError, None),
    ("deeply-nested-json", {"role": "root", "depth": 100_000}, "refresh",
     DeserializationError, None),
    ("never-answers", {}, "refresh", exc.SlowRetrievalError, None),
    ("connection-refused", {}, "refresh", exc.DownloadError, None),
    ("unencodable-metadata", {}, "refresh", SerializationError, None),
    ("unencodable-metadata", {"role": "snapshot"}, "refresh", SerializationError, None),
]


@pytest.mark.parametrize(
    ("fault", "kwargs", "step", "error", "message"),
    FAILING,
    ids=[f"{f[0]}-{'-'.join(map(str, f[1].values())) or 'default'}" for f in FAILING],
)
@pytest.mark.parametrize("endpoint", ["mirror"])
def test_failing_faults(
    server: SimulatorServer,
    tmp_path: Path,
    endpoint: str,
    fault: str,
    kwargs: dict[str, Any],
    step: str,
    error: type[Exception],
    message: str | None,
) -> None:
    server.inject(fault, endpoint=endpoint, **kwargs)
    u = make_updater(server, tmp_path, endpoint, timeout=TIMEOUT)
    action, _, path = step.partition(":")
    with pytest.raises(error, match=message) as raised:
        if action == "refresh":
            u.refresh()
        else:
            u.refresh()
            info = u.get_targetinfo(path)
            if action == "download":
                assert info is not None
                u.download_target(info)
    assert type(raised.value) is error or error is exc.DownloadError
    if fault == "deeply-nested-json":
        assert isinstance(raised.value.__cause__, RecursionError)
    role = kwargs.get("role")
    if role:  # the failing request was for that role
        assert any(f".{role}.json" in k for k in server.requests(endpoint))
    # the other endpoint is unaffected
    assert full_update(make_updater(server, tmp_path / "ok"), "delegated/one.txt") == b"one"


@pytest.mark.parametrize("fault", ["expired-snapshot", "below-threshold", "version-jump"])
def test_warm_client_recovers_after_clear_and_publish(
    repo: SimulatedRepository, server: SimulatorServer, tmp_path: Path, fault: str
) -> None:
    full_update(make_updater(server, tmp_path))
    server.inject(fault)
    try:
        full_update(make_updater(server, tmp_path, warm=True))
    except exc.RepositoryError:
        assert fault != "version-jump"
    server.clear()
    repo.publish()  # skips the versions the forged files used
    assert full_update(make_updater(server, tmp_path, warm=True)) == b"hello world"


def test_http_500_on_all_requests_hits_root(server: SimulatorServer, tmp_path: Path) -> None:
    server.inject("http-500")
    with pytest.raises(exc.DownloadHTTPError) as raised:
        make_updater(server, tmp_path).refresh()
    assert raised.value.status_code == 500
    assert list(server.requests()) == ["metadata/2.root.json"]
    server.clear()
    assert full_update(make_updater(server, tmp_path / "b")) == b"hello world"


def test_connection_refused_on_closed_port(server: SimulatorServer, tmp_path: Path) -> None:
    with pytest.raises(exc.DownloadError):
        make_updater(server, tmp_path, port=closed_port()).refresh()


def test_stop_and_restart_on_same_port(server: SimulatorServer, tmp_path: Path) -> None:
    urls = server.endpoint_urls("mirror")
    server.stop()
    with pytest.raises(RuntimeError):
        server.endpoint_urls("mirror")
    server.start()
    assert server.endpoint_urls("mirror") == urls
    assert full_update(make_updater(server, tmp_path, "mirror")) == b"hello world"


SUCCEEDING = ["stale-mirror", "equivocation", "unknown-signer", "version-jump",
              "expiry-beyond-policy", "padded-delegations"]


@pytest.mark.parametrize("fault", SUCCEEDING)
def test_succeeding_faults(
    repo: SimulatedRepository, server: SimulatorServer, tmp_path: Path, fault: str
) -> None:
    repo.add_target("file.txt", b"hello again")
    repo.publish()
    repo.publish()
    primary = timestamp_md(server.view("primary").get("metadata/timestamp.json") or b"")
    server.inject(fault, endpoint="mirror")
    served = server.view("mirror").get("metadata/timestamp.json")
    assert served is not None
    mirror = timestamp_md(served)
    data = full_update(make_updater(server, tmp_path, "mirror"))
    if fault == "stale-mirror":
        assert data == b"hello world"
        assert mirror.signed.version == primary.signed.version - 2
        return
    assert data == b"hello again"
    if fault == "equivocation":
        assert mirror.signed.version == primary.signed.version
        assert mirror.signed.expires != primary.signed.expires
    elif fault == "unknown-signer":
        assert repo.unknown_signer.public_key.keyid in mirror.signatures
        assert len(mirror.signatures) == 2
    elif fault == "version-jump":
        assert mirror.signed.version == primary.signed.version + 100
    elif fault == "padded-delegations":
        view = server.view("mirror")
        padded = view.get(view.filename("delegated")) or b""
        assert len(padded) == 1_000_000
        assert Metadata.from_bytes(padded).signed == view.state.signed("delegated").signed
        updater = make_updater(server, tmp_path / "padded", "mirror")
        updater.refresh()
        assert updater.get_targetinfo("delegated/one.txt") is not None  # python-tuf accepts it
    else:
        assert mirror.signed.expires > datetime.now(UTC) + timedelta(days=3000)


def test_hold_and_release_mirror(
    repo: SimulatedRepository, server: SimulatorServer, tmp_path: Path
) -> None:
    server.hold_mirror("mirror", state=repo.latest)
    repo.add_target("file.txt", b"v2")
    repo.publish()
    assert full_update(make_updater(server, tmp_path / "a", "mirror")) == b"hello world"
    assert full_update(make_updater(server, tmp_path / "b")) == b"v2"
    server.release_mirror("mirror")
    assert full_update(make_updater(server, tmp_path / "a", "mirror", warm=True)) == b"v2"


def test_rollback_seen_by_warm_client(
    repo: SimulatedRepository, server: SimulatorServer, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="older"):
        server.inject("rollback", states_back=5)
    repo.add_target("file.txt", b"newer")
    repo.publish()
    assert full_update(make_updater(server, tmp_path)) == b"newer"
    server.inject("rollback")
    with pytest.raises(exc.BadVersionNumberError, match="timestamp"):
        make_updater(server, tmp_path, warm=True).refresh()
    # a fresh client happily takes the older (still valid) state
    assert full_update(make_updater(server, tmp_path / "fresh")) == b"hello world"


def test_freeze_expires(repo: SimulatedRepository, server: SimulatorServer, tmp_path: Path) -> None:
    server.inject("freeze", expires_in=timedelta(seconds=4))  # room for a loaded machine
    frozen = server.view().get("metadata/timestamp.json")
    repo.add_target("file.txt", b"not served")
    repo.publish()
    assert server.view().get("metadata/timestamp.json") == frozen
    assert full_update(make_updater(server, tmp_path / "a")) == b"hello world"
    deadline = time.monotonic() + 10
    attempt = 0
    while True:
        attempt += 1
        try:
            make_updater(server, tmp_path / f"poll{attempt}").refresh()
        except exc.ExpiredMetadataError as e:
            assert "timestamp" in str(e)
            break
        assert time.monotonic() < deadline, "frozen timestamp never expired"
        time.sleep(0.1)
    server.clear()
    assert full_update(make_updater(server, tmp_path / "b")) == b"not served"


def test_fault_validation(server: SimulatorServer) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        server.inject("no-such-fault")
    with pytest.raises(TypeError):
        server.inject("http-500", colour="red")
    with pytest.raises(TypeError):
        server.inject("timestamp-missing", role="snapshot")
    repo = SimulatedRepository()
    with SimulatorServer(repo) as bare, pytest.raises(ValueError, match="delegation"):
        bare.inject("broken-delegation")
    server.inject("http-500", endpoint="mirror")
    server.inject("never-answers")
    assert server.faults("primary") == ["never-answers"]
    server.clear(fault="never-answers")
    assert server.faults("primary") == [] and server.faults("mirror") == ["http-500"]
    server.clear()
    assert server.faults("mirror") == []


def test_catalogue_is_complete() -> None:
    expected = {
        "expired-root", "expired-timestamp", "expired-snapshot", "expired-targets",
        "timestamp-missing", "snapshot-mismatch", "unauthorized-key", "below-threshold",
        "broken-delegation", "stale-mirror", "rollback", "freeze", "target-hash-mismatch",
        "oversized-metadata", "slow-retrieval", "http-500", "malformed-json",
        "deeply-nested-json", "never-answers", "connection-refused", "equivocation",
        "unknown-signer", "version-jump", "expiry-beyond-policy", "target-missing",
        "padded-delegations",
        "unencodable-metadata", "corrupt-signature", "root-missing",
    }
    assert set(FAULTS) == expected
    for name, info in FAULTS.items():
        assert info.name == name and info.description and info.client_outcome


@pytest.mark.parametrize("fault", ["never-answers", "slow-retrieval", "oversized-metadata"])
def test_stop_unblocks_handlers(repo: SimulatedRepository, tmp_path: Path, fault: str) -> None:
    server = SimulatorServer(repo).start()
    try:
        server.inject(fault, delay=60.0) if fault == "slow-retrieval" else server.inject(fault)
        errors: list[BaseException] = []

        def client() -> None:
            try:
                make_updater(server, tmp_path, timeout=30).refresh()
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        deadline = time.monotonic() + 5
        while server.request_count() == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        start = time.monotonic()
        server.stop()
        assert time.monotonic() - start < 3
    assert not server.running
    thread.join(10)
    assert not thread.is_alive()
    # never-answers: DownloadError; slow-retrieval: python-tuf lets urllib3's
    # ProtocolError (connection broken mid-body) escape unwrapped
    if fault != "oversized-metadata":
        assert errors


def test_concurrent_publish_while_serving(
    repo: SimulatedRepository, server: SimulatorServer, tmp_path: Path
) -> None:
    stop = threading.Event()

    def publisher() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            repo.add_target("file.txt", f"v{i}".encode())
            repo.publish()

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        for i in range(10):
            data = full_update(make_updater(server, tmp_path / str(i)))
            assert data == b"hello world" or data.startswith(b"v")
    finally:
        stop.set()
        thread.join()


def test_trusted_root_file(repo: SimulatedRepository, tmp_path: Path) -> None:
    path = repo.write_trusted_root(tmp_path / "root.json")
    assert json.loads(path.read_bytes())["signed"]["version"] == 1


def test_consistent_snapshot_off_serves_plain_names_and_back(
    repo: SimulatedRepository, server: SimulatorServer, tmp_path: Path
) -> None:
    repo.set_consistent_snapshot(False)
    state = repo.publish()
    assert not state.consistent_snapshot and repo.target_filename("file.txt") == "targets/file.txt"
    assert state.filename("snapshot") == "metadata/snapshot.json" in state
    assert "metadata/delegated.json" in state and "targets/delegated/one.txt" in state
    # no versioned non-root metadata and no hash-prefixed target is served any more
    assert not [n for n in state if n.startswith("targets/") and n.count(".") > 1]
    assert [n for n in state if n.endswith("snapshot.json")] == ["metadata/snapshot.json"]
    assert full_update(make_updater(server, tmp_path / "a")) == b"hello world"
    assert full_update(make_updater(server, tmp_path / "a", warm=True),
                       "delegated/one.txt") == b"one"
    server.inject("expired-snapshot")  # forged files take the plain names too
    with pytest.raises(exc.ExpiredMetadataError):
        make_updater(server, tmp_path / "a", warm=True).refresh()
    server.clear()
    repo.set_consistent_snapshot(True)
    state = repo.publish()
    assert state.consistent_snapshot and "metadata/snapshot.json" not in state
    assert full_update(make_updater(server, tmp_path / "a", warm=True)) == b"hello world"


# ------------------------------------------------- faults only some clients see (issue 16)


@pytest.mark.parametrize(("timestamp_hashes", "error"), [
    (False, exc.UnsignedMetadataError),  # what most real repositories list: a version only
    (True, exc.LengthOrHashMismatchError),  # the simulator's default: length and sha256
])
def test_corrupt_signature_is_seen_by_new_clients_only(
    tmp_path: Path, timestamp_hashes: bool, error: type[Exception]
) -> None:
    repo = SimulatedRepository(timestamp_hashes=timestamp_hashes)
    repo.add_target("file.txt", b"hello world")
    repo.publish()
    with SimulatorServer(repo) as server:
        full_update(make_updater(server, tmp_path / "returning"))
        view = server.view()
        name = view.filename("snapshot")
        good = view.get(name)
        timestamp = view.get("metadata/timestamp.json")
        server.inject("corrupt-signature")
        view = server.view()
        served = view.get(name)
        assert good is not None and served is not None and served != good
        # same file name (version) and length; the timestamp is untouched
        assert len(served) == len(good)
        assert Metadata.from_bytes(served).signed == Metadata.from_bytes(good).signed
        assert view.filename("snapshot") == name
        assert view.get("metadata/timestamp.json") == timestamp
        with pytest.raises(error, match="snapshot" if error is exc.UnsignedMetadataError else None):
            make_updater(server, tmp_path / "new").refresh()
        server.reset_requests()
        assert full_update(make_updater(server, tmp_path / "returning", warm=True)) == \
            b"hello world"
        assert server.request_count(name=name) == 0, "a returning client fetched the snapshot"
        server.clear()
        assert full_update(make_updater(server, tmp_path / "after")) == b"hello world"


def test_corrupt_signature_of_another_role(
    server: SimulatorServer, tmp_path: Path
) -> None:
    server.inject("corrupt-signature", role="targets")
    with pytest.raises(exc.UnsignedMetadataError, match="targets"):
        make_updater(server, tmp_path).refresh()


def test_root_missing_breaks_clients_from_older_roots_only(
    repo: SimulatedRepository, server: SimulatorServer, tmp_path: Path
) -> None:
    v1 = repo.trusted_root_bytes()
    full_update(make_updater(server, tmp_path / "returning"))
    repo.rotate_keys("timestamp", remove=1)  # root v2: a root-v1 client cannot verify timestamp
    repo.publish()
    repo.rotate_keys("root", remove=1)  # root v3
    state = repo.publish()
    assert state.root_versions() == [1, 2, 3]
    v3 = state.metadata("root")
    assert full_update(make_updater(server, tmp_path / "returning", warm=True)) == b"hello world"

    server.inject("root-missing", version=2)
    assert server.view().get("metadata/2.root.json") is None
    server.reset_requests()
    with pytest.raises(exc.UnsignedMetadataError, match="timestamp"):
        make_updater(server, tmp_path / "from-v1", root=v1).refresh()
    assert server.request_count(name="metadata/2.root.json") == 1
    assert server.request_count(name="metadata/3.root.json") == 0  # the chain stopped at 404
    # clients at root 3 never ask for 2.root.json
    assert full_update(make_updater(server, tmp_path / "from-v3", root=v3)) == b"hello world"
    assert full_update(make_updater(server, tmp_path / "returning", warm=True)) == b"hello world"
    server.clear()
    assert full_update(make_updater(server, tmp_path / "from-v1-again", root=v1)) == \
        b"hello world"


def test_root_missing_needs_an_intermediate_root(
    repo: SimulatedRepository, server: SimulatorServer
) -> None:
    with pytest.raises(ValueError, match="version 2 is not an intermediate root"):
        server.inject("root-missing")  # only 1.root.json is published
    repo.rotate_keys("root")
    repo.publish()
    with pytest.raises(ValueError, match="version 1"):
        server.inject("root-missing", version=1)
    server.inject("root-missing", endpoint="mirror")
    assert server.view("mirror").get("metadata/2.root.json") is None
    assert server.view().get("metadata/2.root.json") is not None
