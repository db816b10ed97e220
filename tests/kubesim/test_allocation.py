"""kubesim's Service allocators through the HTTP API: how node ports are picked, which types may name
one, and concurrent creates that must not share a cluster IP or a node port."""

from __future__ import annotations

import asyncio
from typing import Any

from controlplane.kube.client import KubeApi
from tests.kubesim.server import KubeSim
from tests.kubesim.test_admission import Webhook, configuration, hook, url_client, webhook_fixture  # noqa: F401
from tests.kubesim.test_api import SVC_PATH, error_of, service

NODE_PORT_RANGE = range(30000, 32768)
# The real allocator keeps the lowest min(max(16, size / 32), 128) ports of the range for explicit
# requests: it picks from them only once the rest is full.
STATIC_BAND = min(max(16, len(NODE_PORT_RANGE) // 32), 128)
DYNAMIC_PORTS = NODE_PORT_RANGE[STATIC_BAND:]


def many_ports(count: int) -> list[dict[str, Any]]:
    """`count` named Service ports, none naming a node port."""
    return [{"name": f"p{i}", "port": i} for i in range(1, count + 1)]


def node_ports_of(created: dict[str, Any]) -> list[int]:
    return [p["nodePort"] for p in created["spec"]["ports"]]


async def test_node_ports_are_picked_at_random_above_the_band_kept_for_explicit_requests(kube_api: KubeApi) -> None:
    picked: list[int] = []
    for i in range(10):
        created = await kube_api.request("POST", SVC_PATH, body=service(f"np{i}", type="NodePort"))
        picked += node_ports_of(created)
    assert len(set(picked)) == len(picked)
    assert all(port in DYNAMIC_PORTS for port in picked)
    assert max(picked) - min(picked) >= len(picked)  # scattered, not handed out in order
    explicit = NODE_PORT_RANGE[0]
    ports = [{"port": 80, "nodePort": explicit}]
    taken = await kube_api.request("POST", SVC_PATH, body=service("explicit", type="NodePort", ports=ports))
    assert node_ports_of(taken) == [explicit]


async def test_node_ports_come_from_the_explicit_band_once_the_rest_is_full_then_the_range_is_full(
    kube_api: KubeApi,
) -> None:
    upper = await kube_api.request(
        "POST", SVC_PATH, body=service("upper", type="NodePort", ports=many_ports(len(DYNAMIC_PORTS)))
    )
    assert sorted(node_ports_of(upper)) == list(DYNAMIC_PORTS)
    lower = await kube_api.request("POST", SVC_PATH, body=service("lower", type="NodePort", ports=many_ports(2)))
    assert all(port in NODE_PORT_RANGE[:STATIC_BAND] for port in node_ports_of(lower))
    rest = many_ports(STATIC_BAND - 2)
    await kube_api.request("POST", SVC_PATH, body=service("rest", type="NodePort", ports=rest))
    err = await error_of(kube_api.request("POST", SVC_PATH, body=service("none-left", type="NodePort")))
    assert (err.status, err.message) == (500, "Internal error occurred: failed to allocate a nodePort: range is full")


async def test_only_a_cluster_ip_service_is_refused_a_node_port(kubesim: KubeSim, kube_api: KubeApi) -> None:
    ports = [{"port": 80, "nodePort": 30080}]
    err = await error_of(kube_api.request("POST", SVC_PATH, body=service("cip", ports=ports)))
    assert err.status == 422
    assert err.message == (
        "Service \"cip\" is invalid: spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
    )
    unset = await kube_api.request("POST", SVC_PATH, body=service("zero", ports=[{"port": 80, "nodePort": 0}]))
    assert unset["spec"]["type"] == "ClusterIP"
    external = service("ext", type="ExternalName", externalName="example.com", ports=ports)
    created = await kube_api.request("POST", SVC_PATH, body=external)
    assert node_ports_of(created) == [30080]
    stored = kubesim.get_object("services", "default", "ext")
    assert stored is not None and node_ports_of(stored) == [30080]
    held = await kube_api.request("POST", SVC_PATH, body=service("np", type="NodePort", ports=ports))
    assert node_ports_of(held) == [30080]  # an ExternalName Service is given no node port: 30080 was free


async def test_concurrent_creates_never_share_a_cluster_ip_or_a_node_port(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    async def slow(_: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.2)
        return {"allowed": True}

    webhook.answers["/slow"] = slow
    validating = hook("slow.example.com", url_client(webhook, "/slow"), resources=("services",))
    kubesim.create_object(configuration("ValidatingWebhookConfiguration", "slow", validating))
    bodies = [service(f"s{i}", type="NodePort", ports=many_ports(2)) for i in range(20)]
    created = await asyncio.gather(*(kube_api.request("POST", SVC_PATH, body=body) for body in bodies))
    assert len(webhook.requests("/slow")) == len(bodies)
    ips = [c["spec"]["clusterIP"] for c in created]
    node_ports = [port for c in created for port in node_ports_of(c)]
    assert len(set(ips)) == len(ips)
    assert len(set(node_ports)) == len(node_ports)


async def test_a_create_refused_after_allocation_gives_back_what_it_was_allocated(
    kubesim: KubeSim, kube_api: KubeApi, webhook: Webhook
) -> None:
    webhook.answers["/deny"] = lambda _: {"allowed": False, "status": {"code": 403, "message": "not now"}}
    denying = hook("deny.example.com", url_client(webhook, "/deny"), resources=("services",))
    kubesim.create_object(configuration("ValidatingWebhookConfiguration", "deny", denying))
    body = service("web", type="NodePort", clusterIP="10.96.5.5", ports=[{"port": 80, "nodePort": 30080}])
    err = await error_of(kube_api.request("POST", SVC_PATH, body=body))
    assert err.status == 403
    [request] = webhook.requests("/deny")
    assert request["object"]["spec"]["clusterIP"] == "10.96.5.5"
    await kube_api.request("DELETE", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/deny")
    created = await kube_api.request("POST", SVC_PATH, body=body)
    assert created["spec"]["clusterIP"] == "10.96.5.5" and node_ports_of(created) == [30080]
