"""Leader election on a coordination.k8s.io/v1 Lease, against kubesim over real HTTP.

Candidates are `LeaderElector`s in this process, each with its own connection; a singleton records
when it starts and when it is stopped, so the tests can check that leaders never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import pathlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from controlplane.kube.client import KubeApi, KubeApiError
from controlplane.kube.leader import (
    LeaderElector,
    holder_identity,
    lease_duration_from_env,
    lease_name,
)
from tests.kubesim.fixtures import (  # noqa: F401
    eventually,
    kube_api_fixture,
    kubeconfig_fixture,
    kubesim_fixture,
)
from tests.kubesim.server import KubeSim

CP_NS = "istio-system"
LEASE = lease_name("canary")
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{CP_NS}/leases/{LEASE}"


class PartitionableApi(KubeApi):
    """A real connection that can be cut: while `partitioned`, every request fails like a dead network."""

    partitioned = False

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        if self.partitioned:
            raise aiohttp.ClientConnectionError("network partition (test)")
        return await super().request(*args, **kwargs)


@dataclass
class Terms:
    """Who led when: (candidate, event) in order, and how many lead right now."""

    log: list[tuple[str, str]] = field(default_factory=list)
    leading: set[str] = field(default_factory=set)
    overlaps: int = 0

    def singleton(self, who: str) -> Callable[[], Coroutine[Any, Any, None]]:
        async def lead() -> None:
            if self.leading:
                self.overlaps += 1
            self.leading.add(who)
            self.log.append((who, "start"))
            try:
                await asyncio.Event().wait()
            finally:
                self.leading.discard(who)
                self.log.append((who, "stop"))

        return lead


@dataclass
class Candidates:
    kubeconfig: pathlib.Path
    terms: Terms = field(default_factory=Terms)
    apis: dict[str, PartitionableApi] = field(default_factory=dict)
    electors: dict[str, LeaderElector] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def start(self, who: str, *, lease_duration: float = 2.0) -> LeaderElector:
        api = await PartitionableApi.connect(kubeconfig=self.kubeconfig)
        self.apis[who] = api
        elector = LeaderElector(api, namespace=CP_NS, name=LEASE, identity=who, lease_duration=lease_duration)
        self.electors[who] = elector
        self.tasks[who] = asyncio.create_task(elector.run({"singleton": self.terms.singleton(who)}))
        return elector

    async def resign(self, who: str) -> None:
        task = self.tasks.pop(who)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self) -> None:
        for who in list(self.tasks):
            await self.resign(who)
        for api in self.apis.values():
            await api.close()


@pytest.fixture
async def candidates(kubesim: KubeSim, kubeconfig: pathlib.Path) -> AsyncIterator[Candidates]:
    kubesim.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CP_NS}})
    group = Candidates(kubeconfig)
    try:
        yield group
    finally:
        await group.close()


async def lease_spec(kube_api: KubeApi) -> dict[str, Any]:
    spec: dict[str, Any] = (await kube_api.request("GET", LEASE_PATH))["spec"]
    return spec


async def test_the_first_candidate_creates_the_lease_and_keeps_renewing_it(
    candidates: Candidates, kube_api: KubeApi
) -> None:
    await candidates.start("istiod-a")
    await eventually(lambda: "istiod-a" in candidates.terms.leading, what="istiod-a leading")
    first = await lease_spec(kube_api)
    assert first["holderIdentity"] == "istiod-a"
    assert first["leaseDurationSeconds"] == 2
    assert first["leaseTransitions"] == 0
    assert first["acquireTime"].endswith("Z") and len(first["renewTime"]) == len("2026-01-01T00:00:00.000000Z")

    async def renewed() -> bool:
        spec = await lease_spec(kube_api)
        return bool(spec["renewTime"] != first["renewTime"] and spec["acquireTime"] == first["acquireTime"])

    await eventually(renewed, what="a renewal that keeps acquireTime")


async def test_a_follower_waits_while_the_leader_renews_and_takes_over_at_once_on_release(
    candidates: Candidates, kube_api: KubeApi
) -> None:
    await candidates.start("istiod-a")
    await eventually(lambda: "istiod-a" in candidates.terms.leading, what="istiod-a leading")
    follower = await candidates.start("istiod-b")
    await eventually(lambda: follower.observed is not None, what="the follower's first look at the Lease")
    await asyncio.sleep(3.0)  # longer than the 2 s lease: a live leader's renewals keep the follower out
    assert candidates.terms.leading == {"istiod-a"}

    await candidates.resign("istiod-a")
    released = await lease_spec(kube_api)
    assert released["holderIdentity"] in ("", "istiod-b")
    await eventually(lambda: "istiod-b" in candidates.terms.leading, what="istiod-b leading")
    spec = await lease_spec(kube_api)
    assert spec["holderIdentity"] == "istiod-b" and spec["leaseTransitions"] == 1
    assert candidates.terms.log == [("istiod-a", "start"), ("istiod-a", "stop"), ("istiod-b", "start")]


async def test_a_leader_that_cannot_renew_stops_before_the_follower_takes_over(
    candidates: Candidates, kube_api: KubeApi
) -> None:
    await candidates.start("istiod-a")
    await eventually(lambda: "istiod-a" in candidates.terms.leading, what="istiod-a leading")
    await candidates.start("istiod-b")
    candidates.apis["istiod-a"].partitioned = True

    await eventually(lambda: "istiod-b" in candidates.terms.leading, what="istiod-b taking over the expired Lease")
    assert candidates.terms.log == [("istiod-a", "start"), ("istiod-a", "stop"), ("istiod-b", "start")]
    assert candidates.terms.overlaps == 0
    assert (await lease_spec(kube_api))["holderIdentity"] == "istiod-b"

    candidates.apis["istiod-a"].partitioned = False  # back on the network: istiod-a sees istiod-b and follows
    await eventually(lambda: candidates.electors["istiod-a"].observed is not None, what="a look at the Lease")
    await asyncio.sleep(1.0)
    assert candidates.terms.leading == {"istiod-b"}


async def test_candidates_racing_for_a_new_lease_never_lead_together(candidates: Candidates) -> None:
    names = ["istiod-a", "istiod-b", "istiod-c"]
    await asyncio.gather(*(candidates.start(name) for name in names))
    for _ in names:
        await eventually(lambda: len(candidates.terms.leading) == 1, what="one leader")
        (leader,) = candidates.terms.leading
        await candidates.resign(leader)
    assert candidates.terms.overlaps == 0
    assert sorted(who for who, event in candidates.terms.log if event == "start") == names


async def test_a_leader_stops_at_once_when_it_sees_another_holder(candidates: Candidates, kube_api: KubeApi) -> None:
    await candidates.start("istiod-a", lease_duration=10.0)
    await eventually(lambda: "istiod-a" in candidates.terms.leading, what="istiod-a leading")
    lease = await kube_api.request("GET", LEASE_PATH)
    lease["spec"]["holderIdentity"] = "someone-else"
    await kube_api.request("PUT", LEASE_PATH, body=lease)
    # well before the 10 s lease (and the ~6.7 s renew deadline) could have run out
    await eventually(lambda: not candidates.terms.leading, within=5.0, what="istiod-a stepping down")
    assert candidates.terms.log == [("istiod-a", "start"), ("istiod-a", "stop")]


async def test_a_failing_singleton_fails_the_election_and_releases_the_lease(
    kubesim: KubeSim, kube_api: KubeApi
) -> None:
    kubesim.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CP_NS}})

    async def broken() -> None:
        raise RuntimeError("singleton bug")

    elector = LeaderElector(kube_api, namespace=CP_NS, name=LEASE, identity="istiod-a", lease_duration=2.0)
    with pytest.raises(RuntimeError, match="singleton bug"):
        await asyncio.wait_for(elector.run({"broken": broken}), timeout=30)
    assert (await lease_spec(kube_api))["holderIdentity"] == ""


class InstantApi:
    """An API server that answers at once, and on request `cancel_at` asks for `task` to be cancelled just
    as that answer comes back: the moment a renewal finishes is when a stop can arrive."""

    def __init__(self, cancel_at: int) -> None:
        self.cancel_at = cancel_at
        self.calls = 0
        self.lease: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None

    async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls == self.cancel_at and self.task is not None:
            asyncio.get_running_loop().call_soon(self.task.cancel)
        if method != "GET":
            self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.calls)}}
        elif self.lease is None:
            raise KubeApiError(status=404, reason="NotFound", message=f"leases {LEASE!r} not found")
        return copy.deepcopy(self.lease)


@pytest.mark.parametrize("cancel_at", [2, 4, 6])  # the creating POST, then renewals' PUTs
async def test_a_stop_that_arrives_as_a_renewal_finishes_stops_the_elector(cancel_at: int) -> None:
    api = InstantApi(cancel_at)
    elector = LeaderElector(api, namespace=CP_NS, name=LEASE, identity="istiod-a", lease_duration=0.4)  # type: ignore[arg-type]
    api.task = task = asyncio.create_task(elector.run({"singleton": asyncio.Event().wait}))
    try:
        done, _ = await asyncio.wait([task], timeout=10)
        assert task in done, f"the elector ran on after its stop ({api.calls} requests)"
        assert task.cancelled()
        assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "", "released on the way out"
    finally:
        api.cancel_at = 0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_lease_names_follow_istio_per_revision_elections() -> None:
    assert lease_name("asm-1233-2") == "istio-namespace-controller-election-asm-1233-2"
    assert lease_name("") == "istio-namespace-controller-election-default"


def test_holder_identity_is_the_pod_name_else_host_and_pid() -> None:
    assert holder_identity({"POD_NAME": "istiod-canary-7d9f-abcde"}) == "istiod-canary-7d9f-abcde"
    fallback = holder_identity({})
    assert fallback.rsplit("-", 1)[1].isdigit()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 15.0), ("", 15.0), ("4", 4.0), (" 30 ", 30.0)],
)
def test_lease_duration_comes_from_the_environment(value: str | None, expected: float) -> None:
    environ = {} if value is None else {"MESHPLANE_LEASE_DURATION": value}
    assert lease_duration_from_env(environ) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("15s", "'15s' is not a whole number of seconds"),
        ("1", "1 is too short; use at least 2 seconds"),
        ("1_5", "'1_5' is not a whole number of seconds"),  # int() reads it
        ("\u0661\u0665", "'\u0661\u0665' is not a whole number of seconds"),  # Arabic-Indic 15, which int() reads
        ("2147483648", "2147483648 is too long; a Lease holds at most 2147483647 seconds"),
    ],
)
def test_a_bad_lease_duration_is_named(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"MESHPLANE_LEASE_DURATION: {message}"):
        lease_duration_from_env({"MESHPLANE_LEASE_DURATION": value})
