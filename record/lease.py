"""One driver per sweep, wherever it runs: a lease on the sweep's parent run, held in the tracking store itself.

The lease is a run tag (`LEASE_TAG`) holding its owner (host, pid, start time, a random token) and an expiry time.
`acquire` takes it when it is absent or expired and refuses, in one line naming the holder, while a live driver holds
it; a heartbeat thread renews the expiry every third of the TTL, and `Lease.release` clears it. MLflow tags have no
compare-and-swap, so a taker writes the tag, waits `SETTLE_S`, and reads it back: of two drivers that take it at once,
the one whose write landed last keeps it and the other backs off. A driver that dies without releasing leaves a lease
that expires within `TTL_S`; its rerun may take it then. Expiry times are wall-clock times of the drivers' hosts, so
their clocks must agree to well within the TTL.

The TTL is `TTL_S` unless the environment variable `CIRCUITLIB_LEASE_TTL_S` sets another (seconds, a positive number;
anything else is an InputError naming it): tests shorten it to see a dead driver's lease expire.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace

import psutil
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from circuitlib.errors import InputError

LEASE_TAG = "circuitlib.lease"
TTL_S = 90.0  # a crashed driver's rerun waits at most this long for its lease to expire
TTL_ENV = "CIRCUITLIB_LEASE_TTL_S"  # overrides TTL_S, for tests
HOST_ENV = "CIRCUITLIB_LEASE_HOST"  # overrides the host name a lease records
SETTLE_S = 2.0  # how long a taker waits before reading its write back (a concurrent taker's write lands by then)


def configured_ttl_s() -> float:
    """The lease's TTL: `TTL_ENV` where it is set, `TTL_S` otherwise; an InputError naming it when it is not a
    positive number."""
    raw = os.environ.get(TTL_ENV, "").strip()
    if not raw:
        return TTL_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise InputError(f"{TTL_ENV}={raw!r}: the lease's TTL must be a positive number of seconds")
    return value


def this_host() -> str:
    """The host a lease names: $CIRCUITLIB_LEASE_HOST where set (drivers whose machines share a host name, such as
    pods, tell themselves apart with it), else the host name."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and until when (seconds since the epoch)."""

    host: str
    pid: int
    since: float
    expires: float
    token: str

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: str | None) -> Holder | None:
        """The holder a tag value names; None for no tag or one that cannot be read (taken as no lease)."""
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(str(raw["host"]), int(raw["pid"]), float(raw["since"]), float(raw["expires"]), str(raw["token"]))
        except (ValueError, TypeError, KeyError):
            return None

    def live(self, now: float | None = None) -> bool:
        """Unexpired, and not a driver of this host that is gone (killed): such a lease need not wait its expiry."""
        return self.expires > (time.time() if now is None else now) and not self.gone()

    def gone(self) -> bool:
        """Whether the holder is a driver on this host whose process no longer runs (its pid is free, or names a
        process started after the lease was taken)."""
        if self.host != this_host() or self.pid == os.getpid():
            return False
        try:
            return psutil.Process(self.pid).create_time() > self.since + 1
        except psutil.NoSuchProcess:
            return True

    def describe(self, now: float | None = None) -> str:
        left = max(0, round(self.expires - (time.time() if now is None else now)))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {since}, expires in {left} s"


def holder(client: MlflowClient, run_id: str) -> Holder | None:
    """The lease on run `run_id` as the store has it now (expired or not), or None."""
    return Holder.decode(client.get_run(run_id).data.tags.get(LEASE_TAG))


def _refusal(label: str, other: Holder) -> InputError:
    left = max(0, round(other.expires - time.time()))
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other.since))
    return InputError(
        f"{label}: another driver runs it (host {other.host}, pid {other.pid}, since {since}); wait for it or stop "
        f"it; its lease expires in {left} s if its driver is gone; rerun then"
    )


class Lease:
    """A held lease: renewed by a heartbeat thread until `release` (also a context manager)."""

    def __init__(self, client: MlflowClient, run_id: str, ttl_s: float, owner: Holder, label: str) -> None:
        self.client, self.run_id, self.ttl_s, self.owner, self.label = client, run_id, ttl_s, owner, label
        self.lost = False  # set when a renewal found another driver's lease (this one had expired meanwhile)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id[:8]}", daemon=True)
        self._thread.start()

    def _write(self, owner: Holder) -> None:
        self.client.set_tag(self.run_id, LEASE_TAG, owner.encode())

    def renew(self) -> bool:
        """Push the expiry one TTL ahead; False (and `lost`) when another driver's lease has replaced this one."""
        current = holder(self.client, self.run_id)
        if current is not None and current.token != self.owner.token:
            self.lost = True
            return False
        self.owner = replace(self.owner, expires=time.time() + self.ttl_s)
        self._write(self.owner)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    print(
                        f"{self.label}: lost its lease on MLflow run {self.run_id} to another driver "
                        f"({self.describe_other()})",
                        file=sys.stderr,
                    )
                    return
            except Exception as exc:  # a network blip: try again at the next beat, the lease is still ours till then
                print(f"{self.label}: could not renew its lease ({type(exc).__name__}: {exc})", file=sys.stderr)

    def describe_other(self) -> str:
        other = holder(self.client, self.run_id)
        return other.describe() if other is not None else "none"

    def release(self) -> None:
        """Stop renewing and clear the tag, where it still names this lease (never another driver's)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        try:
            current = holder(self.client, self.run_id)
            if current is not None and current.token == self.owner.token:
                self.client.delete_tag(self.run_id, LEASE_TAG)
        except MlflowException:
            pass  # the run or the tag is gone: nothing to clear
        except Exception as exc:  # the server is gone: the lease expires by itself; the sweep's own outcome stands
            print(f"{self.label}: could not clear its lease ({type(exc).__name__}: {exc})", file=sys.stderr)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(
    client: MlflowClient,
    run_id: str,
    ttl_s: float | None = None,
    label: str | None = None,
    settle_s: float = SETTLE_S,
) -> Lease:
    """Take the lease on run `run_id` (absent or expired) and keep it renewed, `ttl_s` at a time (by default
    `configured_ttl_s()`); an InputError, one line naming the holder, while a live driver holds it or when a
    concurrent taker won it.

    Without compare-and-swap this is Fischer's timed mutual exclusion: read, write, wait `settle_s`, read back. It is
    safe while a taker's read and write take less than `settle_s` together; a taker that took longer cannot know it
    did not overwrite a holder that had already read its own write back, so it clears its write and tries again after
    that holder's next heartbeat (which restores its tag)."""
    label = label or f"MLflow run {run_id}"
    ttl_s = ttl_s if ttl_s is not None else configured_ttl_s()
    for _ in range(3):
        owner = _take(client, run_id, ttl_s, label, settle_s)
        if owner is not None:
            return Lease(client, run_id, ttl_s, owner, label)
        time.sleep(ttl_s / 3 + settle_s)
    raise InputError(f"{label}: the tracking server answered too slowly to take the sweep's lease safely; rerun")


def _take(client: MlflowClient, run_id: str, ttl_s: float, label: str, settle_s: float) -> Holder | None:
    """One try of `acquire`: the lease's new holder, or None when the try was too slow to be sure of it."""
    start = time.monotonic()
    current = holder(client, run_id)
    if current is not None and current.live():
        raise _refusal(label, current)
    now = time.time()
    owner = Holder(this_host(), os.getpid(), now, now + ttl_s, secrets.token_hex(8))
    try:
        client.set_tag(run_id, LEASE_TAG, owner.encode())
    except MlflowException:  # a concurrent taker's first write of the tag won (a store's unique key on it)
        current = holder(client, run_id)
        if current is not None and current.token != owner.token:
            raise _refusal(label, current) from None
        raise
    slow = settle_s > 0 and time.monotonic() - start > settle_s / 2
    time.sleep(settle_s)  # let a concurrent taker's write land, then see whose stands
    current = holder(client, run_id)
    if current is None:
        raise InputError(f"{label}: another driver took and dropped its lease meanwhile; rerun")
    if current.token != owner.token:
        raise _refusal(label, current)
    if slow:
        client.delete_tag(run_id, LEASE_TAG)
        return None
    return owner
