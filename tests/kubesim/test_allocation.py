"""kubesim's Service allocators through the HTTP API: how cluster IPs and node ports are picked, which
types may name a node port, which ports of one Service may share one, what a dry run answers, and
concurrent creates that must not share a cluster IP or a node port."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from controlplane.kube.client import KubeApi
from tests.kubesim.allocators import ServiceAllocator
from tests.kubesim.resources import find
from tests.kubesim.server import KubeSim
from tests.kubesim.status import ApiError
from tests.kubesim.test_admission import Webhook, configuration, hook, url_client, webhook_fixture  # noqa: F401
from tests.kubesim.test_api import MERGE, SVC_PATH, error_of, service

NODE_PORT_RANGE = range(30000, 32768)
# The real allocator keeps the lowest min(max(16, size / 32), 128) ports of the range for explicit
# requests: it picks from them only once the rest is full.
STATIC_BAND = min(max(16, len(NODE_PORT_RANGE) // 32), 128)
DYNAMIC_PORTS = NODE_PORT_RANGE[STATIC_BAND:]
# The cluster IP allocator keeps the lowest min(max(16, cidr size / 16), 256) addresses above the
# network address for explicit requests: 10.96.0.1 to 10.96.1.0 of 10.96.0.0/12.
FIRST_DYNAMIC_IP = ipaddress.IPv4Address("10.96.1.1")
DRY_RUN = [("dryRun", "All")]


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


# -- cluster IPs ----------------------------------------------------------------------------------
async def test_cluster_ips_are_picked_at_random_above_the_band_kept_for_explicit_requests(kube_api: KubeApi) -> None:
    picked = []
    for i in range(10):
        created = await kube_api.request("POST", SVC_PATH, body=service(f"ip{i}"))
        assert created["spec"]["clusterIPs"] == [created["spec"]["clusterIP"]]
        picked.append(ipaddress.IPv4Address(created["spec"]["clusterIP"]))
    assert len(set(picked)) == len(picked)
    assert all(FIRST_DYNAMIC_IP <= ip <= ipaddress.IPv4Address("10.111.255.254") for ip in picked)
    assert int(max(picked)) - int(min(picked)) >= len(picked)  # scattered, not handed out in order
    explicit = await kube_api.request("POST", SVC_PATH, body=service("dns", clusterIP="10.96.0.10"))
    assert explicit["spec"]["clusterIPs"] == ["10.96.0.10"]


def test_cluster_ips_come_from_the_explicit_band_once_the_rest_is_full_then_the_range_is_full() -> None:
    allocator = ServiceAllocator(service_cidr=ipaddress.IPv4Network("10.0.0.0/27"))  # lowest 16 of 30 kept
    services = find("", "v1", "services")
    assert services is not None

    def create(name: str) -> ipaddress.IPv4Address:
        body = service(name)
        allocator.allocate(body, services, dry_run=False)
        return ipaddress.IPv4Address(body["spec"]["clusterIP"])

    upper = {create(f"upper{i}") for i in range(14)}
    assert upper == {ipaddress.IPv4Address(f"10.0.0.{i}") for i in range(17, 31)}
    lower = {create(f"lower{i}") for i in range(16)}
    assert lower == {ipaddress.IPv4Address(f"10.0.0.{i}") for i in range(1, 17)}
    with pytest.raises(ApiError) as info:
        create("none-left")
    assert (info.value.code, info.value.message) == (
        500,
        "Internal error occurred: failed to allocate a serviceIP: range is full",
    )


@pytest.mark.parametrize("address", ["10.96.0.0", "10.111.255.255"])
async def test_the_network_and_broadcast_addresses_are_not_in_the_range(kube_api: KubeApi, address: str) -> None:
    err = await error_of(kube_api.request("POST", SVC_PATH, body=service("edge", clusterIP=address)))
    assert err.status == 422
    assert err.message == (
        f'Service "edge" is invalid: spec.clusterIPs: Invalid value: []string{{"{address}"}}: failed to allocate IP '
        f"{address}: the provided IP ({address}) is not in the valid range. The range of valid IPs is 10.96.0.0/12"
    )


# -- two ports of one Service naming one node port ------------------------------------------------
# How the API server prints the (protocol, port) key of a duplicate port: Go's %#v of an internal
# core.ServicePort with only those two fields set.
DUPLICATE_PORT_80 = (
    'core.ServicePort{Name:"", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, '
    'TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}'
)


async def test_validation_refuses_two_ports_with_one_protocol_and_node_port(kube_api: KubeApi) -> None:
    ports = [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81, "nodePort": 30080}]
    external = service("ext", type="ExternalName", externalName="example.com", ports=ports)
    err = await error_of(kube_api.request("POST", SVC_PATH, body=external))
    assert (err.status, err.message) == (
        422,
        'Service "ext" is invalid: spec.ports[1].nodePort: Duplicate value: 30080',
    )
    assert err.body["details"]["causes"] == [
        {"reason": "FieldValueDuplicate", "message": "Duplicate value: 30080", "field": "spec.ports[1].nodePort"}
    ]
    err = await error_of(kube_api.request("POST", SVC_PATH, body=service("cip", ports=ports)))
    forbidden = "Forbidden: may not be used when `type` is 'ClusterIP'"
    assert err.message == (
        f'Service "cip" is invalid: [spec.ports[0].nodePort: {forbidden}, spec.ports[1].nodePort: {forbidden}, '
        "spec.ports[1].nodePort: Duplicate value: 30080]"
    )
    other_protocol = [ports[0], {**ports[1], "protocol": "UDP"}]
    body = service("ext", type="ExternalName", externalName="example.com", ports=other_protocol)
    created = await kube_api.request("POST", SVC_PATH, body=body)
    assert node_ports_of(created) == [30080, 30080]


async def test_one_port_number_and_protocol_twice_is_named_as_the_api_server_prints_it(kube_api: KubeApi) -> None:
    ports = [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 80, "nodePort": 30080}]
    err = await error_of(kube_api.request("POST", SVC_PATH, body=service("np", type="NodePort", ports=ports)))
    assert err.status == 422
    assert err.message == (
        'Service "np" is invalid: [spec.ports[1].nodePort: Duplicate value: 30080, '
        f"spec.ports[1]: Duplicate value: {DUPLICATE_PORT_80}]"
    )
    assert err.body["details"]["causes"][1] == {
        "reason": "FieldValueDuplicate",
        "message": f"Duplicate value: {DUPLICATE_PORT_80}",
        "field": "spec.ports[1]",
    }
    again = await kube_api.request("POST", SVC_PATH, body=service("np", type="NodePort", ports=ports[:1]))
    assert node_ports_of(again) == [30080]  # the refused create gave it back


async def test_a_create_takes_each_node_port_once_per_port_number(kube_api: KubeApi) -> None:
    """The registry's create gives ports with one port number one node port and takes any other on its own:
    two port numbers naming one node port are refused by the allocator, whatever their protocols."""
    ports = [
        {"name": "a", "port": 80, "nodePort": 30080},
        {"name": "b", "port": 81, "nodePort": 30080, "protocol": "UDP"},
    ]
    err = await error_of(kube_api.request("POST", SVC_PATH, body=service("two", type="NodePort", ports=ports)))
    assert (err.status, err.message) == (
        422,
        'Service "two" is invalid: spec.ports[1].nodePort: Invalid value: 30080: provided port is already allocated',
    )
    dns = [{"name": "tcp", "port": 53}, {"name": "udp", "port": 53, "protocol": "UDP", "nodePort": 30053}]
    created = await kube_api.request("POST", SVC_PATH, body=service("dns", type="NodePort", ports=dns))
    assert node_ports_of(created) == [30053, 30053]
    picked = [{"name": "tcp", "port": 54}, {"name": "udp", "port": 54, "protocol": "UDP"}]
    created = await kube_api.request("POST", SVC_PATH, body=service("dns2", type="NodePort", ports=picked))
    first, second = node_ports_of(created)
    assert first == second and first in DYNAMIC_PORTS


async def test_an_update_naming_one_node_port_twice_for_one_protocol_is_an_internal_error(kube_api: KubeApi) -> None:
    """The registry's update refuses it before validation, with an error that is not a Status: a 500, no reason."""
    one = [{"name": "a", "port": 80, "nodePort": 30080}]
    await kube_api.request("POST", SVC_PATH, body=service("web", type="NodePort", ports=one))
    twice = [*one, {"name": "b", "port": 81, "nodePort": 30080}]
    err = await error_of(
        kube_api.request("PATCH", f"{SVC_PATH}/web", body={"spec": {"ports": twice}}, content_type=MERGE)
    )
    assert (err.status, err.message) == (500, "duplicate nodePort: {TCP 30080}")
    assert "reason" not in err.body and "details" not in err.body
    other_protocol = [*one, {"name": "b", "port": 81, "nodePort": 30080, "protocol": "UDP"}]
    body = {"spec": {"ports": other_protocol}}
    changed = await kube_api.request("PATCH", f"{SVC_PATH}/web", body=body, content_type=MERGE)
    assert node_ports_of(changed) == [30080, 30080]


# -- dry runs -------------------------------------------------------------------------------------
async def test_a_dry_run_create_answers_the_allocators_placeholders_and_holds_nothing(
    kubesim: KubeSim, kube_api: KubeApi
) -> None:
    """The dry-run IP allocator answers the range's network address; the dry-run node port operation one above
    the highest port this write took, else 32769. Neither searches the pools or holds anything."""
    plain = await kube_api.request("POST", SVC_PATH, body=service("plain"), query=DRY_RUN)
    assert (plain["spec"]["clusterIP"], plain["spec"]["clusterIPs"]) == ("10.96.0.0", ["10.96.0.0"])
    two = await kube_api.request(
        "POST", SVC_PATH, body=service("np", type="NodePort", ports=many_ports(2)), query=DRY_RUN
    )
    assert node_ports_of(two) == [32769, 32770]
    named = [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81}]
    after = await kube_api.request("POST", SVC_PATH, body=service("np", type="NodePort", ports=named), query=DRY_RUN)
    assert node_ports_of(after) == [30080, 30081]
    local = service("lb", type="LoadBalancer", externalTrafficPolicy="Local")
    checked = await kube_api.request("POST", SVC_PATH, body=local, query=DRY_RUN)
    assert (node_ports_of(checked), checked["spec"]["healthCheckNodePort"]) == ([32769], 32770)
    assert all(kubesim.get_object("services", "default", name) is None for name in ("plain", "np", "lb"))
    real = await kube_api.request("POST", SVC_PATH, body=service("np", type="NodePort", ports=named))
    assert node_ports_of(real)[0] == 30080 and node_ports_of(real)[1] in DYNAMIC_PORTS
    assert ipaddress.IPv4Address(real["spec"]["clusterIP"]) >= FIRST_DYNAMIC_IP


async def test_a_dry_run_checks_a_requested_node_port_only_against_the_held_ones(kube_api: KubeApi) -> None:
    """The dry-run operation refuses a port held or taken by the same write; unlike a real create it does not
    check the range. A requested cluster IP is checked for its range only."""
    held = await kube_api.request(
        "POST", SVC_PATH, body=service("held", type="NodePort", ports=[{"port": 80, "nodePort": 30080}])
    )
    body = service("np", type="NodePort", ports=[{"port": 80, "nodePort": 30080}])
    err = await error_of(kube_api.request("POST", SVC_PATH, body=body, query=DRY_RUN))
    assert (err.status, err.message) == (
        422,
        'Service "np" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated',
    )
    low = await kube_api.request(
        "POST", SVC_PATH, body=service("np", type="NodePort", ports=[{"port": 80, "nodePort": 29999}]), query=DRY_RUN
    )
    assert node_ports_of(low) == [29999]
    taken_ip = held["spec"]["clusterIP"]
    same_ip = await kube_api.request("POST", SVC_PATH, body=service("ip", clusterIP=taken_ip), query=DRY_RUN)
    assert same_ip["spec"]["clusterIPs"] == [taken_ip]
    err = await error_of(kube_api.request("POST", SVC_PATH, body=service("ip", clusterIP="10.200.0.1"), query=DRY_RUN))
    assert err.status == 422 and "the provided IP (10.200.0.1) is not in the valid range" in err.message


async def test_a_dry_run_update_answers_placeholders_too(kube_api: KubeApi) -> None:
    await kube_api.request("POST", SVC_PATH, body=service("ext", type="ExternalName", externalName="example.com"))
    body = {"spec": {"type": "NodePort", "externalName": None}}
    changed = await kube_api.request("PATCH", f"{SVC_PATH}/ext", body=body, content_type=MERGE, query=DRY_RUN)
    assert changed["spec"]["clusterIPs"] == ["10.96.0.0"] and node_ports_of(changed) == [32769]
    assert (await kube_api.request("GET", f"{SVC_PATH}/ext"))["spec"]["type"] == "ExternalName"
