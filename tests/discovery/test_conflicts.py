"""Conflicting Services: the oldest keeps a contested address, the loser keeps its other ports, and the
conflict is reported (registry problems, metrics); the config a proxy gets never repeats a listener
address or a route domain."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from prometheus_client import REGISTRY

from controlplane.model.services import Service
from controlplane.model.store import ObjectKey
from discovery.connection import Watched
from discovery.generators import GenContext, ProxyView, table_for
from discovery.xdstypes import CLUSTER, LISTENER, ROUTE
from tests.discovery import meshdata as m
from tests.discovery.world import World, proxy

OLD, NEW = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"
SHARED = "10.96.5.5"


def svc(name: str, *, created: str | None, ports: Sequence[tuple[str, int]], ip: str | None = SHARED) -> dict[str, Any]:
    obj = m.service(name, cluster_ip=ip, ports=[{"name": n, "port": p, "targetPort": p} for n, p in ports])
    if created is not None:
        obj["metadata"]["creationTimestamp"] = created
    return obj


def resource_names(world: World, type_url: str, names: Sequence[str] | None = None, **metadata: Any) -> list[str]:
    """Every resource name the proxy is sent, duplicates included (Envoy rejects a response that repeats one)."""
    target = proxy(**metadata)
    snapshot = world.registry.snapshot()
    ctx = GenContext(snapshot=snapshot, view=ProxyView.build(target, snapshot), cache=world.cache)
    watched = Watched(type_url=type_url, names=frozenset(names or ()), wildcard=names is None)
    generated = table_for(target)[type_url].generate(ctx, watched)
    return [r.name for g in generated.groups for r in g.resources]


def tcp_target(listener: Any) -> str:
    assert isinstance(listener, listener_pb2.Listener)
    proxy_config = tcp_proxy_pb2.TcpProxy()
    listener.filter_chains[0].filters[0].typed_config.Unpack(proxy_config)
    return str(proxy_config.cluster)


def route_domains(world: World, port: int) -> dict[str, list[str]]:
    config = world.generate(proxy(), ROUTE, [str(port)])[str(port)]
    assert isinstance(config, route_pb2.RouteConfiguration)
    return {vh.name: list(vh.domains) for vh in config.virtual_hosts}


def problems(world: World) -> Mapping[str, str]:
    return {f"{p.key}:{p.field}": p.message for p in world.registry.problems}


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def test_two_tcp_services_on_one_address_the_oldest_keeps_it_and_the_loser_keeps_its_other_ports() -> None:
    world = World(
        svc("zeta", created=OLD, ports=[("tcp-db", 5432)]),
        svc("alpha", created=NEW, ports=[("tcp-db", 5432), ("tcp-admin", 9000)]),
    )
    names = resource_names(world, LISTENER)
    assert len(names) == len(set(names))
    listeners = world.generate(proxy(), LISTENER)
    assert tcp_target(listeners[f"{SHARED}_5432"]) == "outbound|5432||zeta.default.svc.cluster.local"
    assert tcp_target(listeners[f"{SHARED}_9000"]) == "outbound|9000||alpha.default.svc.cluster.local"
    # the loser still has its clusters (other proxies may reach it by name, and its other port works)
    clusters = world.generate(proxy(), CLUSTER)
    assert {"outbound|5432||alpha.default.svc.cluster.local", "outbound|9000||alpha.default.svc.cluster.local"} <= set(
        clusters
    )
    found = problems(world)
    assert list(found) == ["Service/default/alpha:spec.ports[0].port"]
    assert "Service default/zeta" in found["Service/default/alpha:spec.ports[0].port"]
    assert "no TCP listener" in found["Service/default/alpha:spec.ports[0].port"]
    assert gauge("pilot_conflict_outbound_listener_tcp_over_current_tcp") == 1


def test_the_gauges_follow_a_registry_without_keeping_it_alive() -> None:
    world = World(
        svc("zeta", created=OLD, ports=[("tcp-db", 5432)]),
        svc("alpha", created=NEW, ports=[("tcp-db", 5432)]),
    )
    assert gauge("pilot_conflict_outbound_listener_tcp_over_current_tcp") == 1
    gone = weakref.ref(world.registry)
    del world
    gc.collect()
    assert gone() is None  # the registry (and the store and objects it holds) is freed
    assert gauge("pilot_conflict_outbound_listener_tcp_over_current_tcp") == 0


def test_creation_time_decides_before_the_name_and_the_name_breaks_ties() -> None:
    world = World(
        svc("zeta", created=NEW, ports=[("tcp-db", 5432)]),
        svc("alpha", created=OLD, ports=[("tcp-db", 5432)]),
    )
    assert tcp_target(world.generate(proxy(), LISTENER)[f"{SHARED}_5432"]).endswith("|alpha.default.svc.cluster.local")
    world.apply(svc("zeta", created=OLD, ports=[("tcp-db", 5432)]))  # same second: name order
    assert tcp_target(world.generate(proxy(), LISTENER)[f"{SHARED}_5432"]).endswith("|alpha.default.svc.cluster.local")
    world.apply(svc("alpha", created=NEW, ports=[("tcp-db", 5432)]))
    assert tcp_target(world.generate(proxy(), LISTENER)[f"{SHARED}_5432"]).endswith("|zeta.default.svc.cluster.local")
    assert list(problems(world)) == ["Service/default/alpha:spec.ports[0].port"]


def test_removing_the_winner_gives_the_address_to_the_loser_and_clears_the_problem() -> None:
    world = World(
        svc("zeta", created=OLD, ports=[("tcp-db", 5432)]),
        svc("alpha", created=NEW, ports=[("tcp-db", 5432)]),
    )
    assert f"{SHARED}_5432" in world.generate(proxy(), LISTENER) and problems(world)
    world.store.apply([(ObjectKey("Service", "default", "zeta"), None)])
    assert tcp_target(world.generate(proxy(), LISTENER)[f"{SHARED}_5432"]).endswith("|alpha.default.svc.cluster.local")
    assert problems(world) == {}
    assert gauge("pilot_conflict_outbound_listener_tcp_over_current_tcp") == 0


def test_http_services_sharing_an_address_never_repeat_a_domain() -> None:
    world = World(
        svc("web-old", created=OLD, ports=[("http", 80)]),
        svc("web-new", created=NEW, ports=[("http", 80), ("http-admin", 8081)]),
    )
    hosts = route_domains(world, 80)
    every = [d for domains in hosts.values() for d in domains]
    assert len(every) == len(set(every))
    assert SHARED in hosts["web-old.default.svc.cluster.local:80"]
    new = hosts["web-new.default.svc.cluster.local:80"]
    assert SHARED not in new and "web-new.default.svc.cluster.local" in new and "web-new" in new
    # the loser's other port keeps its address
    assert SHARED in route_domains(world, 8081)["web-new.default.svc.cluster.local:8081"]
    assert list(problems(world)) == ["Service/default/web-new:spec.ports[0].port"]
    assert gauge("pilot_vservice_dup_domain") == 1


def test_http_and_tcp_on_one_address_the_oldest_protocol_takes_it() -> None:
    world = World(
        svc("web", created=OLD, ports=[("http", 80)]),
        svc("raw", created=NEW, ports=[("tcp", 80)]),
    )
    listeners = world.generate(proxy(), LISTENER)
    assert "0.0.0.0_80" in listeners and f"{SHARED}_80" not in listeners
    assert "routed as HTTP" in problems(world)["Service/default/raw:spec.ports[0].port"]
    assert gauge("pilot_conflict_outbound_listener_tcp_over_current_http") == 1

    world.apply(svc("web", created=NEW, ports=[("http", 80)]), svc("raw", created=OLD, ports=[("tcp", 80)]))
    listeners = world.generate(proxy(), LISTENER)
    assert tcp_target(listeners[f"{SHARED}_80"]) == "outbound|80||raw.default.svc.cluster.local"
    assert SHARED not in route_domains(world, 80)["web.default.svc.cluster.local:80"]
    assert list(problems(world)) == ["Service/default/web:spec.ports[0].port"]
    assert gauge("pilot_conflict_outbound_listener_http_over_current_tcp") == 1


def test_http_ports_on_the_sidecars_own_listener_ports_get_no_redirect_listener() -> None:
    world = World(
        svc("odd", created=None, ports=[("http-out", 15001), ("http-in", 15006), ("http", 8080)], ip="10.96.7.7"),
        svc("tcp-odd", created=None, ports=[("tcp", 15006)], ip="10.96.7.8"),
    )
    names = resource_names(world, LISTENER)
    assert len(names) == len(set(names))
    assert "0.0.0.0_8080" in names
    assert "0.0.0.0_15001" not in names and "0.0.0.0_15006" not in names
    assert names.count("virtualOutbound") == 1 and names.count("virtualInbound") == 1
    # a TCP port listens on its own clusterIP, which collides with nothing (as in Istio)
    assert "10.96.7.8_15006" in names
    found = problems(world)
    assert sorted(found) == ["Service/default/odd:spec.ports[0].port", "Service/default/odd:spec.ports[1].port"]
    assert "virtualOutbound" in found["Service/default/odd:spec.ports[0].port"]
    assert gauge("pilot_conflict_outbound_listener_reserved_port") == 2
    # NONE mode: the ports the proxy itself uses are never bound
    none = resource_names(world, LISTENER, INTERCEPTION_MODE="NONE")
    assert "127.0.0.1_8080" in none and not [n for n in none if n.endswith(("_15001", "_15006"))]


def test_none_mode_gives_a_shared_tcp_port_to_the_oldest_service() -> None:
    world = World(
        svc("aaa", created=NEW, ports=[("tcp", 6379)], ip="10.96.1.1"),
        svc("zzz", created=OLD, ports=[("tcp", 6379)], ip="10.96.1.2"),
    )
    listeners = world.generate(proxy(INTERCEPTION_MODE="NONE"), LISTENER)
    assert tcp_target(listeners["127.0.0.1_6379"]) == "outbound|6379||zzz.default.svc.cluster.local"
    assert problems(world) == {}  # different addresses: no conflict in REDIRECT mode


def test_ipv6_cluster_ips_are_bracketed_as_envoy_sees_them_once_it_strips_the_port() -> None:
    world = World(
        svc("v6-a", created=OLD, ports=[("http", 80)], ip="fd00::1"),
        svc("v6-b", created=NEW, ports=[("http", 80)], ip="fd00::1:80"),
    )
    hosts = route_domains(world, 80)
    every = [d for domains in hosts.values() for d in domains]
    assert len(every) == len(set(every))
    assert "[fd00::1]" in hosts["v6-a.default.svc.cluster.local:80"]
    assert "[fd00::1:80]" in hosts["v6-b.default.svc.cluster.local:80"]
    assert problems(world) == {}


def test_an_sctp_port_beside_a_tcp_port_of_the_same_number_is_not_proxied() -> None:
    world = World(
        m.service(
            "sig",
            ports=[
                {"name": "tcp-sig", "port": 3868, "protocol": "TCP"},
                {"name": "sctp-sig", "port": 3868, "protocol": "SCTP"},
            ],
        )
    )
    names = resource_names(world, CLUSTER)
    assert names.count("outbound|3868||sig.default.svc.cluster.local") == 1


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"metadata": {"name": "Web.Front"}}, "metadata.name", "not a valid Service name"),
        ({"metadata": {"namespace": "a.b"}}, "metadata.namespace", "not a valid namespace"),
        ({"metadata": {"creationTimestamp": "yesterday"}}, "metadata.creationTimestamp", "RFC 3339"),
        ({"spec": {"clusterIP": "0.0.0.0"}}, "spec.clusterIP", "not a usable address"),
    ],
)
def test_a_service_that_cannot_be_told_apart_is_rejected_with_the_field(
    change: Mapping[str, Mapping[str, str]], field: str, words: str
) -> None:
    obj = m.service("web")
    for part, values in change.items():
        obj[part].update(values)
    with pytest.raises(ValueError, match=words) as info:
        Service.from_object(obj)
    assert getattr(info.value, "field", None) == field
