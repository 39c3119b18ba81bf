"""The lease on a sweep's parent run (`record.lease`) against a real MLflow SQLite parent."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from circuitlib.errors import InputError
from record import lease, store


@pytest.fixture
def parent(tmp_path) -> tuple[MlflowClient, str]:
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("lease", artifact_location=(tmp_path / "art").as_uri())
    return client, client.create_run(exp, run_name="sweep").info.run_id


def held(client: MlflowClient, run_id: str) -> lease.Holder:
    found = lease.holder(client, run_id)
    assert found is not None, "no lease"
    return found


def token(client: MlflowClient, run_id: str) -> str:
    return held(client, run_id).token


def test_acquire_writes_the_holder_and_release_clears_it(parent):
    client, run_id = parent
    mine = lease.acquire(client, run_id, ttl_s=30, settle_s=0)
    try:
        found = lease.holder(client, run_id)
        assert found is not None and found.token == mine.owner.token and found.live()
        assert 25 < found.expires - time.time() <= 30
    finally:
        mine.release()
    assert lease.holder(client, run_id) is None
    lease.acquire(client, run_id, ttl_s=30, settle_s=0).release()  # free again


def test_a_live_lease_is_refused_in_one_line_naming_its_holder(parent):
    client, run_id = parent
    with lease.acquire(client, run_id, ttl_s=60, settle_s=0) as mine:
        with pytest.raises(InputError) as refused:
            lease.acquire(client, run_id, ttl_s=60, settle_s=0, label="sweep 'dup'")
        line = str(refused.value)
        assert "\n" not in line
        assert line.startswith("sweep 'dup': another driver runs it")
        assert f"host {mine.owner.host}, pid {mine.owner.pid}, since " in line
        assert "its lease expires in " in line and " s if its driver is gone; rerun then" in line
        assert token(client, run_id) == mine.owner.token  # the refused taker left it alone


def test_an_expired_lease_is_taken_over_and_its_late_release_keeps_the_new_one(parent):
    client, run_id = parent
    old = lease.acquire(client, run_id, ttl_s=2, settle_s=0)  # a TTL a loaded machine's SQLite calls stay well inside
    old._stop.set()  # its driver hangs: no more heartbeats
    old._thread.join()
    with pytest.raises(InputError):
        lease.acquire(client, run_id, ttl_s=2, settle_s=0)
    time.sleep(max(0.0, old.owner.expires - time.time()) + 0.2)
    new = lease.acquire(client, run_id, ttl_s=30, settle_s=0)
    try:
        assert token(client, run_id) == new.owner.token
        assert not old.renew() and old.lost  # the old driver, waking up, sees it lost the lease
        old.release()  # and never clears the new holder's
        assert token(client, run_id) == new.owner.token
    finally:
        new.release()


def test_the_heartbeat_renews_the_expiry(parent):
    client, run_id = parent
    with lease.acquire(client, run_id, ttl_s=3, settle_s=0):  # a heartbeat each second, two seconds of slack
        first = held(client, run_id).expires
        time.sleep(4.0)  # beyond the TTL: only renewals keep it live
        now = lease.holder(client, run_id)
        assert now is not None and now.live() and now.expires > first
        with pytest.raises(InputError):
            lease.acquire(client, run_id, ttl_s=3, settle_s=0)
    assert lease.holder(client, run_id) is None


def test_of_two_concurrent_takers_one_wins(parent):
    client, run_id = parent
    assert lease.holder(client, run_id) is None  # the parent is open: no first-use delay in the race
    results: list[object] = []

    def take() -> None:
        try:
            results.append(lease.acquire(client, run_id, ttl_s=3, settle_s=1.0))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if isinstance(r, lease.Lease)]
    try:
        assert len(won) == 1 and sum(isinstance(r, InputError) for r in results) == 1, results
        assert token(client, run_id) == won[0].owner.token
    finally:
        for one in won:
            one.release()


def missed_once(real):
    """`real`, but its first call answers None: a look that came just before another driver's create landed."""
    calls = []

    def look(*args):
        calls.append(args)
        return None if len(calls) == 1 else real(*args)

    return look


def test_experiment_creation_tolerates_a_race(tmp_path, monkeypatch):
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    theirs = client.create_experiment("raced")
    monkeypatch.setattr(client, "get_experiment_by_name", missed_once(client.get_experiment_by_name))
    assert store.experiment_id(client, "raced") == theirs  # RESOURCE_ALREADY_EXISTS: theirs is shared


def test_parent_run_creation_tolerates_a_race(tmp_path, monkeypatch):
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("raced")
    theirs = store.open_sweep_run(client, exp, "s", {"a": 1}, "h", settle_s=0)
    time.sleep(0.01)
    monkeypatch.setattr(store, "sweep_run", missed_once(store.sweep_run))
    assert store.open_sweep_run(client, exp, "s", {"a": 1}, "h", settle_s=0) == theirs
    runs = client.search_runs([exp])
    assert [r.info.run_id for r in runs] == [theirs]  # the duplicate deleted itself


def test_a_taker_too_slow_to_be_sure_clears_its_write_and_tries_again(parent, monkeypatch):
    client, run_id = parent
    writes: list[str] = []
    real = client.set_tag

    def slow_first(run: str, key: str, value: str) -> None:
        writes.append(value)
        if len(writes) == 1:
            time.sleep(1.5)  # beyond half the settle time: another taker may have read its own write back meanwhile
        real(run, key, value)

    monkeypatch.setattr(client, "set_tag", slow_first)
    # a settle time of 2 s, as in use: a loaded machine's SQLite read and write stay well inside half of it
    with lease.acquire(client, run_id, ttl_s=3, settle_s=2.0) as mine:
        first = lease.Holder.decode(writes[0])
        assert len(writes) >= 2 and first is not None and first.token != mine.owner.token  # the slow write was not kept
        assert token(client, run_id) == mine.owner.token


def test_a_killed_driver_of_this_host_is_taken_over_at_once_and_one_of_another_host_is_not(parent, monkeypatch):
    client, run_id = parent
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, now = int(exited.stdout), time.time()
    dead = lease.Holder(lease.this_host(), dead_pid, now, now + 600, "dead")
    client.set_tag(run_id, lease.LEASE_TAG, dead.encode())
    assert dead.gone() and not dead.live()  # its pid runs no process: no need to wait 600 s
    with lease.acquire(client, run_id, ttl_s=30, settle_s=0) as mine:
        assert token(client, run_id) == mine.owner.token
    monkeypatch.setenv(lease.HOST_ENV, "another-machine")  # the same dead pid, seen from another host: still live
    assert dead.live() and not dead.gone()
    client.set_tag(run_id, lease.LEASE_TAG, dead.encode())
    with pytest.raises(InputError, match="another driver runs it"):
        lease.acquire(client, run_id, ttl_s=30, settle_s=0)
