"""The service registry: typed model objects from config objects, and change events naming what changed."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import pytest

from controlplane.model.endpoints import Health
from controlplane.model.meshconfig import OutboundPolicy
from controlplane.model.registry import ConfigUpdate, ModelChange, Registry, UpdateKind
from controlplane.model.security import MtlsMode
from controlplane.model.services import Protocol
from controlplane.model.store import ConfigStore, ObjectKey
from controlplane.sources.files import FileSource


def service(
    name: str, ns: str = "default", *, ports: list[dict[str, Any]] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": "10.0.0.1",
            "selector": {"app": name},
            "ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}],
            **spec,
        },
    }


def endpoint_slice(
    svc: str, ns: str = "default", *, ips: list[str], name: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name or f"{svc}-abc", "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [ip], **extra} for ip in ips],
    }


def pod(
    name: str,
    ip: str,
    ns: str = "default",
    *,
    labels: Mapping[str, str] | None = None,
    sa: str = "default",
    sidecar: bool = True,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {**(labels or {}), **({"security.istio.io/tlsMode": "istio"} if sidecar else {})},
        },
        "spec": {
            "serviceAccountName": sa,
            "containers": [{"name": "app", "ports": [{"name": "web", "containerPort": 8080}]}],
        },
        "status": {"podIP": ip, "phase": "Running"},
    }


class Recorder:
    def __init__(self, registry: Registry) -> None:
        self.changes: list[ModelChange] = []
        registry.subscribe(self.changes.append)

    def last(self) -> frozenset[ConfigUpdate]:
        assert self.changes, "no model change was published"
        return self.changes[-1].updates


def put(store: ConfigStore, *objects: dict[str, Any]) -> None:
    store.apply([(ObjectKey.of(o), o) for o in objects])


def delete(store: ConfigStore, obj: dict[str, Any]) -> None:
    store.apply([(ObjectKey.of(obj), None)])


@pytest.fixture
def store() -> ConfigStore:
    return ConfigStore()


def test_service_hostname_ports_and_protocols(store: ConfigStore) -> None:
    registry = Registry(store)
    put(
        store,
        service(
            "reviews",
            "shop",
            ports=[
                {"name": "http-web", "port": 80},
                {"name": "grpc", "port": 9090},
                {"name": "db", "port": 5432, "appProtocol": "tcp"},
                {"name": "api", "port": 8443, "appProtocol": "kubernetes.io/h2c"},
                {"name": "other", "port": 7000},
            ],
        ),
    )
    svc = registry.snapshot().services["reviews.shop.svc.cluster.local"]
    assert [(p.port, p.protocol) for p in svc.ports] == [
        (80, Protocol.HTTP),
        (9090, Protocol.GRPC),
        (5432, Protocol.TCP),
        (8443, Protocol.HTTP2),
        (7000, Protocol.UNSUPPORTED),
    ]
    assert svc.cluster_ip == "10.0.0.1"


def test_services_are_indexed_by_http_port_in_hostname_order(store: ConfigStore) -> None:
    registry = Registry(store)
    put(
        store,
        service("web", "b", ports=[{"name": "http", "port": 80}, {"name": "db", "port": 5432, "appProtocol": "tcp"}]),
        service("api", "a", ports=[{"name": "grpc", "port": 80}, {"name": "http-alt", "port": 8080}]),
        service("db", "a", ports=[{"name": "tcp", "port": 5432}]),
    )
    index = registry.snapshot().http_services_by_port
    assert {port: [s.ref for s in services] for port, services in index.items()} == {
        80: ["a/api", "b/web"],
        8080: ["a/api"],
    }
    delete(store, service("api", "a"))
    assert {
        port: [s.ref for s in services] for port, services in registry.snapshot().http_services_by_port.items()
    } == {80: ["b/web"]}


def test_endpoints_join_slices_with_pods_and_report_health(store: ConfigStore) -> None:
    registry = Registry(store)
    put(
        store,
        service("web"),
        pod("web-1", "10.1.0.1", labels={"app": "web"}, sa="web-sa"),
        pod("web-2", "10.1.0.2", labels={"app": "web"}, sidecar=False),
        endpoint_slice("web", ips=["10.1.0.1", "10.1.0.2", "10.1.0.3"], zone="zone-a"),
    )
    eps = registry.snapshot().endpoints_for("web.default.svc.cluster.local")
    by_ip = {e.address: e for e in eps.endpoints}
    assert by_ip["10.1.0.1"].sidecar and by_ip["10.1.0.1"].service_account == "web-sa"
    assert not by_ip["10.1.0.2"].sidecar
    assert by_ip["10.1.0.3"].pod == "" and by_ip["10.1.0.3"].zone == "zone-a"
    assert {e.port for e in eps.endpoints} == {8080}
    assert eps.service_accounts == {"web-sa", "default"}


@pytest.mark.parametrize(
    ("conditions", "health"),
    [
        ({}, Health.HEALTHY),
        ({"ready": False}, Health.UNHEALTHY),
        ({"ready": False, "serving": True, "terminating": True}, Health.DRAINING),
        ({"ready": False, "serving": False, "terminating": True}, Health.UNHEALTHY),
    ],
)
def test_endpoint_health_follows_slice_conditions(
    store: ConfigStore, conditions: dict[str, bool], health: Health
) -> None:
    registry = Registry(store)
    put(store, service("web"), endpoint_slice("web", ips=["10.1.0.1"], conditions=conditions))
    (ep,) = registry.snapshot().endpoints_for("web.default.svc.cluster.local").endpoints
    assert ep.health is health


def test_endpoint_only_change_is_reported_as_endpoints(store: ConfigStore) -> None:
    registry = Registry(store)
    put(store, service("web"), pod("a", "10.1.0.1", labels={"app": "web"}), endpoint_slice("web", ips=["10.1.0.1"]))
    recorder = Recorder(registry)
    before = registry.snapshot()
    put(store, pod("b", "10.1.0.2", labels={"app": "web"}), endpoint_slice("web", ips=["10.1.0.1", "10.1.0.2"]))
    host = "web.default.svc.cluster.local"
    assert ConfigUpdate(UpdateKind.ENDPOINTS, host) in recorder.last()
    assert ConfigUpdate(UpdateKind.SERVICE, host) not in recorder.last()
    after = registry.snapshot()
    assert after.services_version == before.services_version
    assert after.endpoints_for(host).revision != before.endpoints_for(host).revision


def test_new_service_account_behind_a_service_is_a_service_change(store: ConfigStore) -> None:
    registry = Registry(store)
    put(store, service("web"), pod("a", "10.1.0.1", sa="one"), endpoint_slice("web", ips=["10.1.0.1"]))
    recorder = Recorder(registry)
    put(store, pod("b", "10.1.0.2", sa="two"), endpoint_slice("web", ips=["10.1.0.1", "10.1.0.2"]))
    host = "web.default.svc.cluster.local"
    assert {ConfigUpdate(UpdateKind.ENDPOINTS, host), ConfigUpdate(UpdateKind.SERVICE, host)} <= recorder.last()


def test_pod_gaining_a_sidecar_changes_the_endpoints_and_its_workload(store: ConfigStore) -> None:
    registry = Registry(store)
    put(store, service("web"), pod("a", "10.1.0.1", sidecar=False), endpoint_slice("web", ips=["10.1.0.1"]))
    recorder = Recorder(registry)
    put(store, pod("a", "10.1.0.1", sidecar=True))
    assert recorder.last() == {
        ConfigUpdate(UpdateKind.ENDPOINTS, "web.default.svc.cluster.local"),
        ConfigUpdate(UpdateKind.WORKLOAD, "10.1.0.1"),
    }
    assert registry.snapshot().endpoints_for("web.default.svc.cluster.local").endpoints[0].sidecar


def test_pod_phase_change_alone_publishes_nothing(store: ConfigStore) -> None:
    registry = Registry(store)
    put(store, pod("a", "10.1.0.1"))
    recorder = Recorder(registry)
    changed = pod("a", "10.1.0.1")
    changed["status"]["phase"] = "Succeeded"
    put(store, changed)
    assert recorder.changes == []


def test_service_removal_and_slice_removal(store: ConfigStore) -> None:
    registry = Registry(store)
    svc, slc = service("web"), endpoint_slice("web", ips=["10.1.0.1"])
    put(store, svc, slc)
    recorder = Recorder(registry)
    delete(store, slc)
    assert recorder.last() == {ConfigUpdate(UpdateKind.ENDPOINTS, "web.default.svc.cluster.local")}
    assert registry.snapshot().endpoints_for("web.default.svc.cluster.local").endpoints == ()
    delete(store, svc)
    assert recorder.last() == {ConfigUpdate(UpdateKind.SERVICE, "web.default.svc.cluster.local")}
    assert registry.snapshot().services == {}


def test_registry_reads_what_the_store_held_before_it_was_created(store: ConfigStore) -> None:
    put(store, service("web"), endpoint_slice("web", ips=["10.1.0.1"]))
    registry = Registry(store)
    snap = registry.snapshot()
    assert list(snap.services) == ["web.default.svc.cluster.local"]
    assert len(snap.endpoints_for("web.default.svc.cluster.local").endpoints) == 1


def peer_auth(
    name: str, ns: str, mode: str, *, selector: dict[str, str] | None = None, ports: dict[int, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {port: {"mode": m} for port, m in ports.items()}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def test_peer_authentication_most_specific_scope_wins(store: ConfigStore) -> None:
    registry = Registry(store)
    put(store, peer_auth("mesh", "istio-system", "STRICT"))
    snap = registry.snapshot()
    assert snap.mtls_for(namespace="shop", labels={}).mode is MtlsMode.STRICT
    put(store, peer_auth("ns", "shop", "PERMISSIVE"))
    assert registry.snapshot().mtls_for(namespace="shop", labels={}).mode is MtlsMode.PERMISSIVE
    put(store, peer_auth("wl", "shop", "UNSET", selector={"app": "db"}, ports={5432: "DISABLE"}))
    eff = registry.snapshot().mtls_for(namespace="shop", labels={"app": "db"})
    assert eff.mode is MtlsMode.PERMISSIVE  # UNSET inherits the namespace policy
    assert eff.for_port(5432) is MtlsMode.DISABLE
    assert registry.snapshot().mtls_for(namespace="other", labels={}).mode is MtlsMode.STRICT


def test_no_peer_authentication_means_permissive(store: ConfigStore) -> None:
    assert Registry(store).snapshot().mtls_for(namespace="x", labels={}).mode is MtlsMode.PERMISSIVE


def test_mesh_config_from_the_revision_configmap(store: ConfigStore) -> None:
    registry = Registry(store, mesh_configmap="istio-canary")
    recorder = Recorder(registry)
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio-canary", "namespace": "istio-system"},
        "data": {"mesh": "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\nconnectTimeout: 2s\n"},
    }
    put(store, cm)
    assert recorder.last() == {ConfigUpdate(UpdateKind.MESH, "")}
    mesh = registry.snapshot().mesh
    assert mesh.outbound_policy is OutboundPolicy.REGISTRY_ONLY and mesh.connect_timeout == 2.0


def test_invalid_object_in_the_store_is_reported_and_last_good_state_kept(store: ConfigStore) -> None:
    registry = Registry(store)
    put(store, service("web"))
    bad = service("web")
    bad["spec"]["ports"] = [{"name": "http", "port": 70000}]
    put(store, bad)
    (problem,) = registry.problems
    assert problem.field == "spec.ports[0].port" and "out of range" in problem.message
    assert registry.snapshot().services["web.default.svc.cluster.local"].ports[0].port == 80


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ("kind: Service\napiVersion: v1\nmetadata: {name: a}\nspec: {ports: [{port: http}]}", "spec.ports[0].port"),
        ("kind: Service\napiVersion: v1\nmetadata: {name: a}\nspec: {clusterIP: 10.0.0.300}", "spec.clusterIP"),
        (
            "kind: EndpointSlice\napiVersion: discovery.k8s.io/v1\nmetadata: {name: a}\naddressType: IPv4\n"
            "endpoints: [{addresses: [not-an-ip]}]",
            "endpoints[0].addresses[0]",
        ),
        (
            "kind: EndpointSlice\napiVersion: discovery.k8s.io/v1\nmetadata: {name: a}\naddressType: IPv4\n"
            "endpoints: [{addresses: [10.0.0.1], conditions: {ready: 'yes'}}]",
            "endpoints[0].conditions.ready",
        ),
        ("kind: Pod\napiVersion: v1\nmetadata: {name: a}\nstatus: {podIP: nope}", "status.podIP"),
        (
            "kind: PeerAuthentication\napiVersion: security.istio.io/v1\nmetadata: {name: a}\n"
            "spec: {mtls: {mode: SOMETIMES}}",
            "spec.mtls.mode",
        ),
        (
            "kind: PeerAuthentication\napiVersion: security.istio.io/v1\nmetadata: {name: a}\n"
            "spec: {portLevelMtls: {8080: {mode: DISABLE}}}",
            "spec.portLevelMtls",
        ),
        (  # int() reads an Arabic-Indic 80 as 80; a port is ASCII digits
            "kind: PeerAuthentication\napiVersion: security.istio.io/v1\nmetadata: {name: a}\n"
            "spec: {selector: {matchLabels: {app: a}}, portLevelMtls: {'\u0668\u0660': {mode: DISABLE}}}",
            "spec.portLevelMtls.\u0668\u0660",
        ),
        (  # more digits than int() converts
            "kind: Service\napiVersion: v1\nmetadata: {name: a}\nspec: {ports: [{port: 80, targetPort: '"
            + "9" * 5000
            + "'}]}",
            "spec.ports[0].targetPort",
        ),
    ],
)
def test_config_dir_reports_the_bad_field_and_keeps_the_file(tmp_path: pathlib.Path, document: str, field: str) -> None:
    store = ConfigStore()
    good = "kind: Service\napiVersion: v1\nmetadata: {name: keep}\nspec: {ports: [{port: 80}]}\n"
    path = tmp_path / "mesh.yaml"
    path.write_text(good)
    source = FileSource(tmp_path, store)
    source.scan()
    path.write_text(good + "---\n" + document + "\n")
    source.scan()
    (problem,) = source.problems
    assert (problem.file, problem.document, problem.field) == ("mesh.yaml", 1, field)
    assert [key.name for key in [ObjectKey.of(o) for o in store.list("Service")]] == ["keep"]


def mesh_configmap(mesh: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": mesh},
    }


@pytest.mark.parametrize(
    ("mesh", "message"),
    [
        ("[" * 5_000, "not valid YAML/JSON at line 1 column 1001"),
        ("a:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(60)), "nests deeper than 50 levels"),
        ("base: &b {mode: STRICT}\ncopy: *b\n", "aliases"),
        ("meshMTLS: {}\n" + "# padding\n" * 7_000, "at most 65,536"),
    ],
    ids=["brackets", "deep-map", "alias", "oversized"],
)
def test_a_mesh_config_that_cannot_be_read_is_a_problem_and_the_rest_of_the_batch_applies(
    store: ConfigStore, mesh: str, message: str
) -> None:
    registry = Registry(store)
    put(store, mesh_configmap("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"))
    put(store, mesh_configmap(mesh), service("web"))  # one batch: the ConfigMap's event comes first
    (problem,) = registry.problems
    assert problem.field == "data.mesh" and message in problem.message, problem
    assert "web.default.svc.cluster.local" in registry.snapshot().services
    assert registry.snapshot().mesh.outbound_policy is OutboundPolicy.REGISTRY_ONLY  # the last good one


def test_an_unexpected_failure_on_one_object_costs_that_object_only(
    store: ConfigStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(store)
    real = Registry._on_policy

    def broken(self: Registry, event: Any, updates: Any) -> None:
        if event.key.name == "broken":
            raise KeyError("a bug")
        real(self, event, updates)

    monkeypatch.setattr(Registry, "_on_policy", broken)
    put(store, peer_auth("broken", "default", "STRICT"), peer_auth("fine", "shop", "STRICT"), service("web"))
    (problem,) = registry.problems
    assert "KeyError" in problem.message and "broken" in problem.key
    assert "web.default.svc.cluster.local" in registry.snapshot().services
    assert [p.name for p in registry.snapshot().peer_authentications] == ["fine"]
