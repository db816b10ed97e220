"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

One Lease per revision in the control plane's namespace, named like Istio's per-revision elections
(`<election id>-<revision>`). meshplane runs both of its singletons (the `istio-ca-root-cert`
publisher and the webhook caBundle patcher) under Istio's namespace-controller election id: Istio
elects the root ConfigMap writer under that name and runs its caBundle patcher without any election,
so there is no Istio name to follow for it; both singletons write what the same CA decides, so one
holder for both means one failover and half the renewals.

The algorithm (`LeaderElector.try_acquire_or_renew`):
- no Lease: create it holding it; a 409 means another candidate was first;
- a Lease held by someone else is respected until `leaseDurationSeconds` have passed since this
  candidate *observed* its record change (a local monotonic clock, never a comparison of the
  holder's timestamps with this machine's clock); an empty `holderIdentity` (a released Lease) is
  free at once;
- taking or renewing it is an update carrying the read `resourceVersion`, so of two candidates
  only one write succeeds and two never both lead.

`LeaderElector.run(singletons)` campaigns until cancelled. While leading, each singleton runs as a
task; renewals happen every `renew_period`. Leadership ends, and the singletons are cancelled at
once, when another holder is seen or when no renewal succeeded for `renew_deadline` (shorter than the
lease duration, so a partitioned leader stops before anyone may take over). Cancelling `run()`
stops the singletons and releases the Lease (empty holder, `leaseDurationSeconds: 1`) so a
successor takes over at its next attempt. Every transition is logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import socket
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from controlplane.kube.client import JsonObject, KubeApi, KubeApiError
from controlplane.literals import INT32_MAX, whole_number

log = logging.getLogger(__name__)

# Istio's election id for the root ConfigMap controller (pilot/pkg/leaderelection: NamespaceController).
ELECTION_ID = "istio-namespace-controller-election"
LEASE_DURATION_ENV = "MESHPLANE_LEASE_DURATION"
DEFAULT_LEASE_DURATION = 15.0  # seconds, written to the Lease as leaseDurationSeconds
MAX_LEASE_DURATION = INT32_MAX  # leaseDurationSeconds is an int32
MAX_RENEW_PERIOD = 2.0

Singleton = Callable[[], Coroutine[Any, Any, None]]
_FAILURES = (KubeApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError)


def lease_name(revision: str) -> str:
    """Istio's per-revision Lease name: the election id, a dash, the revision (`default` included)."""
    return f"{ELECTION_ID}-{revision or 'default'}"


def holder_identity(environ: Mapping[str, str]) -> str:
    """The pod name (`POD_NAME`, set through the downward API), else `<hostname>-<pid>`."""
    return environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def lease_duration_from_env(environ: Mapping[str, str]) -> float:
    """`MESHPLANE_LEASE_DURATION` in whole seconds (default 15, at least 2).

    Raises ValueError naming the variable for a value that is not such a number.
    """
    text = environ.get(LEASE_DURATION_ENV, "").strip()
    if not text:
        return DEFAULT_LEASE_DURATION
    seconds = whole_number(text)
    if seconds is None:
        raise ValueError(f"{LEASE_DURATION_ENV}: {text!r} is not a whole number of seconds (default 15)")
    if seconds < 2:
        raise ValueError(f"{LEASE_DURATION_ENV}: {seconds} is too short; use at least 2 seconds (default 15)")
    if seconds > MAX_LEASE_DURATION:
        raise ValueError(
            f"{LEASE_DURATION_ENV}: {seconds} is too long; a Lease holds at most {MAX_LEASE_DURATION} seconds"
        )
    return float(seconds)


def _micro_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, kw_only=True)
class LeaseRecord:
    """The election's view of a Lease's spec. Unparseable fields read as empty (an expired Lease)."""

    holder: str = ""
    duration: int = 0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: JsonObject) -> LeaseRecord:
        spec = lease.get("spec")
        spec = spec if isinstance(spec, dict) else {}

        def integer(value: Any) -> int:
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=integer(spec.get("leaseDurationSeconds")),
            acquire_time=str(spec.get("acquireTime") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            transitions=integer(spec.get("leaseTransitions")),
        )

    def spec(self) -> JsonObject:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


class LeaderElector:
    """One candidate for one Lease. See the module docstring; `run()` as a task, cancel it to resign."""

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = DEFAULT_LEASE_DURATION,
        renew_period: float | None = None,
        renew_deadline: float | None = None,
    ) -> None:
        """`renew_period` defaults to min(2 s, duration / 4), `renew_deadline` to two thirds of the duration."""
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_period = renew_period if renew_period is not None else min(MAX_RENEW_PERIOD, lease_duration / 4)
        self.renew_deadline = renew_deadline if renew_deadline is not None else lease_duration * 2 / 3
        if not 0 < self.renew_period < self.renew_deadline < lease_duration:
            raise ValueError("need 0 < renew_period < renew_deadline < lease_duration")
        self.leading = False
        self.observed: LeaseRecord | None = None
        self._observed_at = 0.0

    @property
    def _path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    @property
    def _lease(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def _observe(self, record: LeaseRecord) -> None:
        if record != self.observed:
            if self.observed is None or record.holder != self.observed.holder:
                log.info("%s is held by %r", self._lease, record.holder or "nobody")
            self.observed = record
            self._observed_at = asyncio.get_running_loop().time()

    def _record(self, *, previous: LeaseRecord | None) -> LeaseRecord:
        """The record to write: a renewal keeps acquireTime and the transition count, a takeover counts one more."""
        now = _micro_time(dt.datetime.now(dt.UTC))
        duration = max(1, round(self.lease_duration))
        if previous is None:
            return LeaseRecord(holder=self.identity, duration=duration, acquire_time=now, renew_time=now)
        renewal = previous.holder == self.identity and self.leading
        return LeaseRecord(
            holder=self.identity,
            duration=duration,
            acquire_time=previous.acquire_time if renewal else now,
            renew_time=now,
            transitions=previous.transitions if renewal else previous.transitions + 1,
        )

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this candidate holds the Lease afterwards.

        A lost race (409) or a Lease validly held by someone else is False; other API and transport
        errors propagate.
        """
        timeout = max(1.0, self.renew_period)
        try:
            lease = await self.api.request("GET", self._path, request_timeout=timeout)
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            record = self._record(previous=None)
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": record.spec(),
            }
            try:
                await self.api.request("POST", self._path.rsplit("/", 1)[0], body=body, request_timeout=timeout)
            except KubeApiError as create_exc:
                if create_exc.status == 409:
                    return False
                raise
            self._observe(record)
            return True
        current = LeaseRecord.from_lease(lease)
        self._observe(current)
        if current.holder and current.holder != self.identity:
            expires = self._observed_at + current.duration
            if asyncio.get_running_loop().time() < expires:
                return False
        record = self._record(previous=current)
        metadata = {k: v for k, v in (lease.get("metadata") or {}).items() if k != "managedFields"}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": record.spec()}
        try:
            await self.api.request("PUT", self._path, body=body, request_timeout=timeout)
        except KubeApiError as exc:
            if exc.status in (404, 409):  # deleted or written since the read: try again next period
                return False
            raise
        self._observe(record)
        return True

    async def release(self) -> None:
        """Give the Lease up if this candidate holds it: empty holder, duration 1 s. Errors are logged."""
        if self.observed is None or self.observed.holder != self.identity:
            return
        now = _micro_time(dt.datetime.now(dt.UTC))
        record = LeaseRecord(duration=1, acquire_time=now, renew_time=now, transitions=self.observed.transitions)
        try:
            lease = await self.api.request("GET", self._path, request_timeout=5.0)
            if LeaseRecord.from_lease(lease).holder != self.identity:
                return
            metadata = {k: v for k, v in (lease.get("metadata") or {}).items() if k != "managedFields"}
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata}
            await self.api.request("PUT", self._path, body={**body, "spec": record.spec()}, request_timeout=5.0)
        except _FAILURES as exc:
            log.warning("could not release %s: %s", self._lease, exc)
            return
        self.observed = record
        log.info("released %s", self._lease)

    async def _attempt(self, *, within: float) -> bool:
        try:
            async with asyncio.timeout(max(0.01, within)):
                return await self.try_acquire_or_renew()
        except _FAILURES as exc:
            log.warning("%s: %s", self._lease, str(exc) or type(exc).__name__)
            return False

    async def _acquire(self) -> None:
        while True:
            if await self._attempt(within=self.lease_duration):
                return
            await asyncio.sleep(self.renew_period * (1 + 0.2 * random.random()))  # client-go's jitter

    async def _keep(self, tasks: list[asyncio.Task[None]]) -> str:
        """Renew until leadership is lost; return why. A singleton that fails raises its exception."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            done, _ = await asyncio.wait(tasks, timeout=self.renew_period, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                raise exc if exc is not None else RuntimeError(f"singleton {task.get_name()} ended")
            started = loop.time()
            if await self._attempt(within=renewed + self.renew_deadline - started):
                renewed = started
                continue
            if self.observed is not None and self.observed.holder not in ("", self.identity):
                return f"{self.observed.holder!r} holds it now"
            if loop.time() - renewed >= self.renew_deadline:
                return f"no renewal succeeded for {self.renew_deadline:.1f}s"

    async def run(self, singletons: Mapping[str, Singleton]) -> None:
        """Campaign, lead, and campaign again after a loss, until cancelled (then release the Lease).

        Raises what a singleton raised if one fails, after stopping the others and releasing.
        """
        log.info("campaigning for %s as %r", self._lease, self.identity)
        tasks: list[asyncio.Task[None]] = []
        try:
            while True:
                await self._acquire()
                self.leading = True
                log.info("became the leader: %s; starting %s", self._lease, ", ".join(singletons))
                tasks = [asyncio.create_task(make(), name=name) for name, make in singletons.items()]
                why = await self._keep(tasks)
                self.leading = False
                await _cancel(tasks)
                log.warning("lost leadership of %s (%s); stopped %s", self._lease, why, ", ".join(singletons))
        finally:
            was_leading, self.leading = self.leading, False
            await _cancel(tasks)
            if was_leading:
                await self.release()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
