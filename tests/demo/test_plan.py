"""The demo's plan: addresses, the config dir local mode reads, labels, and what it binds."""

from __future__ import annotations

import collections
import pathlib

import pytest

from controlplane.demo.plan import (
    CONTROL_PLANE_PORTS,
    AddressPlan,
    PlanError,
    labels_file,
    required_binds,
    workloads,
    write_config_dir,
)
from controlplane.model.endpoints import Health
from controlplane.model.registry import Registry
from controlplane.model.security import MtlsMode
from controlplane.model.store import ConfigStore
from controlplane.sources.files import FileSource


def test_default_plan_puts_workload_n_on_127_0_10_n_and_127_0_11_n() -> None:
    plan = AddressPlan()
    demo = workloads(plan)
    assert [w.index for w in demo] == list(range(1, len(demo) + 1))
    for w in demo:
        assert (w.pod_ip, w.loopback) == (f"127.0.10.{w.index}", f"127.0.11.{w.index}")
    assert plan.control_plane_addr("secure-grpc") == "127.0.100.1:15012"
    assert plan.control_plane_addr("http") == "127.0.100.1:8080"
    assert {w.name for w in demo} == {"frontend", "reviews-v1", "reviews-v2", "greeter", "greeter-client"}
    assert [w.name for w in demo if w.proxyless] == ["greeter-client"]


def test_a_custom_plan_moves_every_address() -> None:
    plan = AddressPlan(pod_prefix="127.31.7", loopback_prefix="127.31.8", control_plane="127.31.9.1")
    for w in workloads(plan):
        assert w.pod_ip.startswith("127.31.7.") and w.loopback.startswith("127.31.8.")
    hosts = {b.host for b in required_binds(plan, workloads(plan))}
    assert all(h.startswith("127.31.") for h in hosts)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pod_prefix": "10.0.10"}, "--pod-prefix: '10.0.10' must be three octets inside 127.0.0.0/8"),
        ({"loopback_prefix": "127.0.300"}, "--loopback-prefix: '127.0.300' must be three octets"),
        ({"pod_prefix": "127.0.10.1"}, "--pod-prefix: '127.0.10.1' must be three octets"),
        ({"loopback_prefix": "127.0.10"}, "--loopback-prefix: '127.0.10' must differ from --pod-prefix"),
        ({"control_plane": "10.1.1.1"}, "--control-plane: '10.1.1.1' must be an IPv4 address in 127.0.0.0/8"),
        ({"control_plane": "127.0.11.200"}, "--control-plane: '127.0.11.200' must lie outside"),
    ],
)
def test_a_bad_plan_names_the_field(fields: dict[str, str], message: str) -> None:
    with pytest.raises(PlanError, match=message.replace(".", r"\.").replace("(", r"\(")):
        AddressPlan(**fields)


def test_the_config_dir_loads_cleanly_in_local_mode(tmp_path: pathlib.Path) -> None:
    demo = workloads(AddressPlan())
    write_config_dir(tmp_path, demo)
    store = ConfigStore()
    source = FileSource(tmp_path, store)
    source.scan()
    assert source.problems == []
    registry = Registry(store)
    snapshot = registry.snapshot()
    assert registry.problems == []

    reviews = snapshot.endpoints_for("reviews.demo.svc.cluster.local").endpoints
    assert sorted((e.address, e.port, e.pod, e.service_account, e.sidecar, e.health) for e in reviews) == [
        ("127.0.10.1", 9080, "reviews-v1", "reviews", True, Health.HEALTHY),
        ("127.0.10.2", 9080, "reviews-v2", "reviews", True, Health.HEALTHY),
    ]
    greeter = snapshot.services["greeter.demo.svc.cluster.local"]
    assert [(p.name, p.port) for p in greeter.ports] == [("grpc", 7070)]
    assert snapshot.services["frontend.demo.svc.cluster.local"].ports[0].port == 8080
    for w in demo:
        pod = snapshot.workloads_by_ip[w.pod_ip]
        assert (pod.name, pod.service_account, pod.sidecar) == (w.name, w.service_account, True)
        assert pod.labels["app"] == w.app and pod.labels["version"] == w.version
    assert snapshot.mtls_for(namespace="demo", labels={}).mode is MtlsMode.STRICT


def test_the_labels_file_is_in_downward_api_format() -> None:
    reviews_v2 = next(w for w in workloads(AddressPlan()) if w.name == "reviews-v2")
    assert labels_file(reviews_v2).splitlines() == [
        'app="reviews"',
        'security.istio.io/tlsMode="istio"',
        'version="v2"',
    ]


def test_required_binds_name_each_listener_once() -> None:
    plan = AddressPlan()
    binds = required_binds(plan, workloads(plan))
    counts = collections.Counter((b.host, b.port) for b in binds)
    assert [key for key, n in counts.items() if n > 1] == []
    assert {(plan.control_plane, port) for port in CONTROL_PLANE_PORTS.values()} <= set(counts)
    named = {str(b) for b in binds}
    assert "127.0.10.4:15020 (frontend agent)" in named
    assert "127.0.11.4:9080 (frontend Envoy outbound to reviews)" in named
    assert "127.0.10.1:9080 (reviews-v1 Envoy inbound)" in named
    assert not any(b.host == "127.0.11.5" for b in binds)  # the proxyless client listens nowhere
