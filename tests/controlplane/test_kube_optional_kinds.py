"""Optional watched kinds (Istio CRDs that may be absent), against kubesim over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from controlplane.kube.client import KubeApi
from controlplane.kube.source import DEFAULT_KINDS, NAMESPACES, PEER_AUTHENTICATIONS, KubeSource, Scope, WatchedKind
from controlplane.kube.watching import Backoff
from controlplane.model.registry import Registry
from controlplane.model.security import MtlsMode
from controlplane.model.store import ConfigStore, ObjectKey
from tests.kubesim.fixtures import (  # noqa: F401
    eventually,
    kube_api_fixture,
    kubeconfig_fixture,
    kubesim_fixture,
)
from tests.kubesim.server import KubeSim
from tests.kubesim.test_crds import CRD_NAME, crd, peer_authentication

CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
KINDS = (
    WatchedKind(resource=NAMESPACES, scope=Scope.CLUSTER),
    WatchedKind(resource=PEER_AUTHENTICATIONS, scope=Scope.ALL_NAMESPACES, optional=True),
)


def pa_key(name: str, namespace: str = "default") -> ObjectKey:
    return ObjectKey("PeerAuthentication", namespace, name)


@contextlib.asynccontextmanager
async def running(source: KubeSource) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_source(api: KubeApi, store: ConfigStore, kinds: tuple[WatchedKind, ...] = KINDS) -> KubeSource:
    return KubeSource(
        api,
        store,
        namespace="istio-system",
        kinds=kinds,
        backoff=lambda: Backoff(base=0.01, cap=0.05),
        timeout_seconds=30,
        probe_interval=0.1,
    )


def pa_requests(sim: KubeSim) -> int:
    return sum(1 for method, path in sim.requests if method == "GET" and "/peerauthentications" in path)


async def test_peer_authentication_is_a_default_optional_kind() -> None:
    [entry] = [k for k in DEFAULT_KINDS if k.resource.kind == "PeerAuthentication"]
    assert entry.optional and entry.scope is Scope.ALL_NAMESPACES
    assert entry.resource.path() == "/apis/security.istio.io/v1/peerauthentications"
    assert not [k for k in DEFAULT_KINDS if k.optional and k is not entry]


async def test_an_absent_crd_syncs_empty_then_its_objects_come_and_go_with_the_crd(
    kubesim: KubeSim, kube_api: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controlplane.kube")
    store = ConfigStore()
    registry = Registry(store)
    source = make_source(kube_api, store)
    async with running(source):
        await eventually(lambda: store.synced, what="synced without the CRD")
        assert store.list("PeerAuthentication") == []
        assert "not installed; meshplane will look again every 0.1s" in caplog.text
        probes = pa_requests(kubesim)
        await eventually(lambda: pa_requests(kubesim) >= probes + 2, what="probes while the CRD is absent")
        assert "retrying in" not in caplog.text  # probing is not a failure

        kubesim.create_object(crd())
        kubesim.create_object(peer_authentication("strict"))
        stored = await eventually(lambda: store.get(pa_key("strict")), what="the policy after the CRD appeared")
        assert (stored["apiVersion"], stored["kind"]) == ("security.istio.io/v1", "PeerAuthentication")
        [policy] = registry.snapshot().peer_authentications
        assert (policy.namespace, policy.name, policy.mode) == ("default", "strict", MtlsMode.STRICT)
        assert "is served now" in caplog.text

        await kube_api.request(
            "POST", PEER_AUTHENTICATIONS.path("default"), body=peer_authentication("later", mode="PERMISSIVE")
        )
        await eventually(lambda: store.get(pa_key("later")), what="a policy created while watched")

        await kube_api.request("DELETE", CRD_PATH)
        await eventually(lambda: store.list("PeerAuthentication") == [], what="policies gone with the CRD")
        assert registry.snapshot().peer_authentications == ()
        probes = pa_requests(kubesim)
        await eventually(lambda: pa_requests(kubesim) >= probes + 2, what="probing resumed")

        kubesim.create_object(crd())
        kubesim.create_object(peer_authentication("again"))
        await eventually(lambda: store.get(pa_key("again")), what="the policy after the CRD came back")
    assert source.synced


async def test_a_required_kind_that_is_not_served_blocks_sync_and_retries_with_warnings(
    kubesim: KubeSim, kube_api: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controlplane.kube")
    store = ConfigStore()
    required = (KINDS[0], WatchedKind(resource=PEER_AUTHENTICATIONS, scope=Scope.ALL_NAMESPACES))
    source = make_source(kube_api, store, required)
    async with running(source):
        await eventually(lambda: "retrying in" in caplog.text, what="a retried 404")
        await eventually(lambda: pa_requests(kubesim) >= 3, what="more attempts")
        assert not store.synced
        kubesim.create_object(crd())
        await eventually(lambda: store.synced, what="synced once the resource is served")
    assert "not installed" not in caplog.text


async def test_a_watch_404_relists_once_before_backing_off(kubesim: KubeSim, kube_api: KubeApi) -> None:
    kubesim.create_object(crd())
    kubesim.create_object(peer_authentication("kept"))
    store = ConfigStore()
    source = make_source(kube_api, store)
    async with running(source):
        await eventually(lambda: store.get(pa_key("kept")), what="the policy")
        lists = pa_lists(kubesim)
        kubesim.inject_faults(status=404, count=1, method="GET", path_prefix=PEER_AUTHENTICATIONS.path(), watch=True)
        kubesim.close_watches()
        await eventually(lambda: pa_lists(kubesim) > lists, what="a relist after the watch 404")
        kubesim.create_object(peer_authentication("after"))
        await eventually(lambda: store.get(pa_key("after")), what="watching again")
        assert store.get(pa_key("kept")) is not None  # still served: nothing was dropped


def pa_lists(sim: KubeSim) -> int:
    return sum(
        1
        for method, path in sim.requests
        if method == "GET" and "/peerauthentications" in path and "watch=1" not in path
    )
