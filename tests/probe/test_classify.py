"""Which role a python-tuf failure is about: the message where it names one."""

from __future__ import annotations

from datetime import timedelta

import pytest
from support import Sim, poll
from tuf.api import exceptions

from exporter.probe import FailedRole, Prober
from exporter.probe.classify import role_from_message


@pytest.mark.parametrize(("message", "role"), [
    # the messages of python-tuf's TrustedMetadataSet
    ("Final root.json is expired", FailedRole.ROOT),
    ("timestamp.json is expired", FailedRole.TIMESTAMP),
    ("snapshot.json is expired", FailedRole.SNAPSHOT),
    ("New targets is expired", FailedRole.TARGETS),
    ("New bins-0a is expired", FailedRole.DELEGATED),
])
def test_an_expiry_names_its_role_whatever_was_fetched_last(message: str,
                                                            role: FailedRole) -> None:
    # python-tuf finds an expired timestamp while it loads the snapshot: the last request
    # (the fallback) is the snapshot's, the message says timestamp
    error = exceptions.ExpiredMetadataError(message)
    assert role_from_message(error, FailedRole.SNAPSHOT) is role


def test_other_failures_keep_the_role_of_the_last_request() -> None:
    error = exceptions.BadVersionNumberError("Expected snapshot version 3, got 2")
    assert role_from_message(error, FailedRole.SNAPSHOT) is FailedRole.SNAPSHOT
    assert role_from_message(exceptions.ExpiredMetadataError("odd"), None) is None


def test_a_frozen_timestamp_found_expired_by_a_full_refresh_is_a_timestamp_failure(
    sim: Sim,
) -> None:
    # Every probe a full refresh: a returning ngclient keeps the cached timestamp (same
    # version), then raises "timestamp.json is expired" while it fetches the snapshot.
    prober = Prober(sim.state_dir)
    config = sim.config(full_refresh_every=1)
    sim.server.inject("freeze", expires_in=timedelta(seconds=3))
    first = prober.probe(config, config.primary)
    assert first.success and not first.reused_verdict, first.message
    sim.repo.publish()  # the frozen endpoint does not follow
    result = poll(lambda: (r := prober.probe(config, config.primary)).reason is not None and r,
                  timeout=20)
    assert not result.reused_verdict
    assert (str(result.reason), str(result.role)) == ("expired", "timestamp"), result.message
