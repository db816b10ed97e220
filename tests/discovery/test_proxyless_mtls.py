"""Proxyless gRPC clusters get mesh mTLS (gRFC A29) when every endpoint runs a sidecar, so endpoint
changes that alter that reach proxyless clients as CDS pushes too (sidecars still get EDS only)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from controlplane.model.registry import Registry
from controlplane.model.store import ConfigStore, ObjectKey
from discovery.generators import GRPC
from discovery.service import DiscoveryService
from discovery.xdstypes import CLUSTER, ENDPOINT
from tests.discovery import meshdata as m
from tests.discovery.harness import SotwClient, XdsHarness, node
from tests.discovery.world import World, proxy

HOST = "api.default.svc.cluster.local"
API = f"outbound|9000||{HOST}"


def objects(*, api_2_sidecar: bool, ready: bool = True, api_2_sa: str = "api") -> list[dict[str, Any]]:
    return [
        m.service("api", port=9000, target=9090, port_name="grpc", cluster_ip="10.96.0.2"),
        m.endpoint_slice("api", ips=["10.2.0.1", "10.2.0.2"], port=9090, port_name="grpc", ready=ready),
        m.pod("api-1", "10.2.0.1", app="api", sa="api"),
        m.pod("api-2", "10.2.0.2", app="api", sa=api_2_sa, sidecar=api_2_sidecar),
    ]


def proxyless_cluster(world: World) -> cluster_pb2.Cluster:
    cluster = world.generate(proxy(pod="client", ip="10.5.0.1", GENERATOR="grpc"), CLUSTER, [API], table=GRPC)[API]
    assert isinstance(cluster, cluster_pb2.Cluster)
    return cluster


def test_cluster_uses_the_bootstraps_certificate_provider_when_every_endpoint_has_a_sidecar() -> None:
    cluster = proxyless_cluster(World(*objects(api_2_sidecar=True, api_2_sa="api-canary")))
    assert not cluster.transport_socket_matches  # gRPC reads only the cluster's own transport socket
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"
    tls = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(tls)
    common = tls.common_tls_context
    provider = common.tls_certificate_provider_instance
    assert (provider.instance_name, provider.certificate_name) == ("default", "default")
    validation = common.combined_validation_context.default_validation_context
    roots = validation.ca_certificate_provider_instance
    assert (roots.instance_name, roots.certificate_name) == ("default", "ROOTCA")
    assert [s.exact for s in validation.match_subject_alt_names] == [
        "spiffe://cluster.local/ns/default/sa/api",
        "spiffe://cluster.local/ns/default/sa/api-canary",
    ]
    # gRPC rejects what it does not support: SDS configs, TLS parameters.
    assert not common.tls_certificate_sds_secret_configs and not common.HasField("tls_params")
    assert not common.combined_validation_context.HasField("validation_context_sds_secret_config")


MESH_WITHOUT_AUTO_MTLS = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "istio", "namespace": "istio-system"},
    "data": {"mesh": "enableAutoMtls: false\n"},
}


@pytest.mark.parametrize(
    "mesh",
    [
        pytest.param(objects(api_2_sidecar=False), id="one-endpoint-without-sidecar"),
        pytest.param(objects(api_2_sidecar=True)[:2], id="no-pod-known"),
        pytest.param(objects(api_2_sidecar=True)[:1], id="no-endpoints"),
        pytest.param([*objects(api_2_sidecar=True), MESH_WITHOUT_AUTO_MTLS], id="auto-mtls-off"),
    ],
)
def test_cluster_stays_plaintext_unless_every_endpoint_takes_mesh_mtls(mesh: list[dict[str, Any]]) -> None:
    cluster = proxyless_cluster(World(*mesh))
    assert not cluster.HasField("transport_socket") and not cluster.transport_socket_matches


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    harness = XdsHarness()
    harness.apply(*objects(api_2_sidecar=False))
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def subscribe(client: SotwClient, type_url: str, names: list[str]) -> cluster_pb2.Cluster | None:
    await client.request(type_url, names)
    response = await client.recv()
    await client.ack(response, names)
    return cluster(response) if names == [API] and type_url == CLUSTER else None


def cluster(response: object) -> cluster_pb2.Cluster:
    assert response.type_url == CLUSTER  # type: ignore[attr-defined]
    (found,) = [cluster_pb2.Cluster.FromString(r.value) for r in response.resources]  # type: ignore[attr-defined]
    return found


async def test_a_sidecar_gained_or_lost_pushes_cds_to_proxyless_watchers_only(xds: XdsHarness) -> None:
    proxyless = xds.sotw(node(pod="client", ip="10.5.0.1", GENERATOR="grpc"))
    sidecar = xds.sotw(node(pod="other", ip="10.6.0.1"))
    first = await subscribe(proxyless, CLUSTER, [API])
    assert first is not None and not first.HasField("transport_socket")
    await subscribe(proxyless, ENDPOINT, [API])
    await subscribe(sidecar, CLUSTER, [])
    await subscribe(sidecar, ENDPOINT, [API])

    xds.apply(*objects(api_2_sidecar=True))  # every endpoint now runs a sidecar
    pushed = await proxyless.recv()
    assert cluster(pushed).HasField("transport_socket")
    await proxyless.ack(pushed, [API])
    assert (await proxyless.recv()).type_url == ENDPOINT  # CDS came first: make before break
    assert (await sidecar.recv()).type_url == ENDPOINT  # a sidecar's clusters already match per endpoint

    xds.apply(*objects(api_2_sidecar=True, ready=False))  # health only: nothing a cluster reads
    assert (await proxyless.recv()).type_url == ENDPOINT

    xds.apply(*objects(api_2_sidecar=False, ready=False))
    back = await proxyless.recv()
    assert not cluster(back).HasField("transport_socket")


def applying(store: ConfigStore) -> Callable[[list[dict[str, Any]]], None]:
    """A function that writes objects into `store` as one batch, as a config source does."""

    def apply(items: list[dict[str, Any]]) -> None:
        store.apply([(ObjectKey.of(o), o) for o in items])

    return apply


def test_a_flip_and_flip_back_within_one_debounce_window_still_names_the_host() -> None:
    store = ConfigStore()
    registry = Registry(store)
    apply = applying(store)
    apply(objects(api_2_sidecar=False))
    # Long debounce times: requests merge into the pending one and nothing is emitted.
    flipping = DiscoveryService(registry, debounce_quiet=60, debounce_max=60)
    apply(objects(api_2_sidecar=True))
    apply(objects(api_2_sidecar=False))
    pending = flipping.debouncer.pending
    assert pending is not None and pending.tls_changed == {HOST}

    health = DiscoveryService(registry, debounce_quiet=60, debounce_max=60)
    apply(objects(api_2_sidecar=False, ready=False))
    health_only = health.debouncer.pending
    assert health_only is not None and health_only.tls_changed == frozenset()


def test_endpoint_changes_build_no_snapshot_until_a_push_needs_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot copies the views that changed, every Pod's after a Pod change: built for each endpoints
    change, 100 changes/s in a cluster of 30,000 Pods kept the server at 30% of a core with the event
    loop held up to 100 ms. What a change needs from the endpoints it reads from the registry as is."""
    store = ConfigStore()
    registry = Registry(store)
    apply = applying(store)
    apply(objects(api_2_sidecar=False))
    service = DiscoveryService(registry, debounce_quiet=60, debounce_max=60)
    built: list[int] = []
    build = registry._build_snapshot
    monkeypatch.setattr(registry, "_build_snapshot", lambda: built.append(1) or build())
    apply(objects(api_2_sidecar=True))
    apply(objects(api_2_sidecar=True, ready=False))
    pending = service.debouncer.pending
    assert pending is not None and pending.tls_changed == {HOST}  # still told apart, from the endpoints alone
    assert built == []
    assert service.snapshot().version == registry.version and built == [1]
