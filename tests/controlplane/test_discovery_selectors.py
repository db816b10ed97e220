"""meshConfig.discoverySelectors: parsing, and the Kubernetes source's scope against kubesim over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from controlplane.kube.client import KubeApi
from controlplane.kube.source import KubeSource
from controlplane.kube.watching import Backoff
from controlplane.model.fields import ObjectError
from controlplane.model.meshconfig import MeshConfig, selects
from controlplane.model.registry import Registry
from controlplane.model.store import ConfigStore, ObjectKey
from tests.kubesim.fixtures import (  # noqa: F401
    eventually,
    kube_api_fixture,
    kubeconfig_fixture,
    kubesim_fixture,
)
from tests.kubesim.server import KubeSim

CP_NS = "istio-system"
MERGE = "application/merge-patch+json"


def mesh_configmap(selectors: Any) -> dict[str, Any]:
    mesh = yaml.safe_dump({"discoverySelectors": selectors}) if selectors is not None else ""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": CP_NS},
        "data": {"mesh": mesh},
    }


def parse(selectors: Any) -> MeshConfig:
    return MeshConfig.from_configmap(mesh_configmap(selectors))


# -- parsing and matching -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selectors", "labels", "selected"),
    [
        (None, {}, True),
        ([], {"a": "b"}, True),
        ([{}], {}, True),
        ([{"matchLabels": {"mesh": "on"}}], {"mesh": "on"}, True),
        ([{"matchLabels": {"mesh": "on"}}], {"mesh": "off"}, False),
        ([{"matchLabels": {"mesh": "on"}}, {"matchLabels": {"team": "a"}}], {"team": "a"}, True),
        ([{"matchLabels": {"mesh": "on", "team": "a"}}], {"team": "a"}, False),
        ([{"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]}], {"env": "dev"}, True),
        ([{"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}], {}, True),
        ([{"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}], {"env": "prod"}, False),
        ([{"matchExpressions": [{"key": "env", "operator": "Exists"}]}], {"env": ""}, True),
        ([{"matchExpressions": [{"key": "example.com/skip", "operator": "DoesNotExist"}]}], {}, True),
        (
            [{"matchLabels": {"mesh": "on"}, "matchExpressions": [{"key": "env", "operator": "Exists"}]}],
            {"mesh": "on"},
            False,
        ),
    ],
    ids=[
        "absent",
        "empty-list",
        "empty-selector",
        "labels",
        "labels-mismatch",
        "ored",
        "anded",
        "in",
        "notin-absent",
        "notin-present",
        "exists",
        "doesnotexist",
        "labels-and-expressions",
    ],
)
def test_selectors_follow_kubernetes_label_selector_semantics(
    selectors: Any, labels: dict[str, str], selected: bool
) -> None:
    assert selects(parse(selectors).discovery_selectors, labels) is selected


@pytest.mark.parametrize(
    ("selectors", "field", "message"),
    [
        ({"matchLabels": {"a": "b"}}, "data.mesh.discoverySelectors", "must be a list"),
        (["mesh=on"], "data.mesh.discoverySelectors[0]", "must be a mapping"),
        ([{"matchLabel": {"a": "b"}}], "data.mesh.discoverySelectors[0].matchLabel", "not a field of a label selector"),
        ([{"matchLabels": {"a": 1}}], "data.mesh.discoverySelectors[0].matchLabels.a", "quote it"),
        ([{"matchLabels": {"-a": "b"}}], "data.mesh.discoverySelectors[0].matchLabels.-a", "not a valid label key"),
        ([{"matchLabels": {"a": "b c"}}], "data.mesh.discoverySelectors[0].matchLabels.a", "not a valid label value"),
        (
            [{"matchLabels": {"Example.com/a": "b"}}],
            "data.mesh.discoverySelectors[0].matchLabels.Example.com/a",
            "DNS-1123 subdomain",
        ),
        (
            [{}, {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}],
            "data.mesh.discoverySelectors[1].matchExpressions[0].operator",
            "'Equals' is not a valid operator",
        ),
        (
            [{"matchExpressions": [{"key": "a", "operator": "In"}]}],
            "data.mesh.discoverySelectors[0].matchExpressions[0].values",
            "must be non-empty for operator In",
        ),
        (
            [{"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}],
            "data.mesh.discoverySelectors[0].matchExpressions[0].values",
            "must be empty for operator Exists",
        ),
        (
            [{"matchExpressions": [{"operator": "Exists"}]}],
            "data.mesh.discoverySelectors[0].matchExpressions[0].key",
            "is required",
        ),
        (
            [{"matchExpressions": [{"key": "a", "operator": "Exists", "value": []}]}],
            "data.mesh.discoverySelectors[0].matchExpressions[0].value",
            "not a field of a label selector requirement",
        ),
    ],
    ids=[
        "not-a-list",
        "string-selector",
        "typo-field",
        "number-value",
        "bad-key",
        "bad-value",
        "uppercase-prefix",
        "bad-operator",
        "in-without-values",
        "exists-with-values",
        "no-key",
        "typo-requirement-field",
    ],
)
def test_invalid_selectors_are_rejected_naming_the_field(selectors: Any, field: str, message: str) -> None:
    with pytest.raises(ObjectError) as info:
        parse(selectors)
    assert info.value.field == field
    assert message in info.value.message


# -- the Kubernetes source ----------------------------------------------------------------------


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def workload(ns: str, name: str, ip: str) -> list[dict[str, Any]]:
    """A ServiceAccount, a Service, its EndpointSlice and the Pod behind it."""
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": f"{name}-sa", "namespace": ns}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-x1", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [ip], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": name}}
            ],
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"serviceAccountName": f"{name}-sa", "containers": [{"name": "app", "image": "example/app:1"}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]},
        },
    ]


async def create_workload(sim: KubeSim, api: KubeApi, ns: str, name: str, ip: str) -> None:
    """Create `workload(...)`; the pod gets its IP through the status subresource, as a kubelet reports it."""
    for obj in workload(ns, name, ip):
        sim.create_object(obj)
    status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
    await api.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", body=status, content_type=MERGE)


@dataclass
class Mesh:
    sim: KubeSim
    api: KubeApi
    source: KubeSource
    store: ConfigStore
    registry: Registry

    def hosts(self) -> set[str]:
        return set(self.registry.snapshot().services)

    def endpoints(self, host: str) -> list[tuple[str, str]]:
        return [(e.address, e.service_account) for e in self.registry.snapshot().endpoints_for(host).endpoints]

    def namespaces_in_store(self, kind: str) -> set[str]:
        return {obj["metadata"]["namespace"] for obj in self.store.list(kind)}

    def lists(self) -> int:
        """How many list (not watch) requests the source has made so far."""
        return sum(
            1
            for method, path in self.sim.requests
            if method == "GET" and "watch" not in parse_qs(urlsplit(path).query) and "/api" in path
        )

    async def label(self, ns: str, labels: dict[str, str | None]) -> None:
        await self.api.request(
            "PATCH", f"/api/v1/namespaces/{ns}", body={"metadata": {"labels": labels}}, content_type=MERGE
        )

    async def set_selectors(self, selectors: Any) -> None:
        body = mesh_configmap(selectors)
        await self.api.request("PUT", f"/api/v1/namespaces/{CP_NS}/configmaps/istio", body=body)


def host(ns: str, name: str) -> str:
    return f"{name}.{ns}.svc.cluster.local"


@pytest.fixture
async def mesh(kubesim: KubeSim, kube_api: KubeApi) -> AsyncIterator[Mesh]:
    """Namespaces a (mesh=on), b (mesh=on, team=b) and c (no labels), one workload each; selectors mesh=on."""
    kubesim.create_object(namespace(CP_NS))
    kubesim.create_object(mesh_configmap([{"matchLabels": {"mesh": "on"}}]))
    kubesim.create_object(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio-sidecar-injector", "namespace": CP_NS}}
    )
    for index, (ns, labels) in enumerate((("a", {"mesh": "on"}), ("b", {"mesh": "on", "team": "b"}), ("c", {}))):
        kubesim.create_object(namespace(ns, **labels))
        await create_workload(kubesim, kube_api, ns, "web", f"10.0.0.{index + 1}")
    store = ConfigStore()
    source = KubeSource(
        kube_api, store, namespace=CP_NS, backoff=lambda: Backoff(base=0.01, cap=0.05), timeout_seconds=30
    )
    registry = Registry(store, mesh_namespace=CP_NS)
    task = asyncio.create_task(source.run())
    try:
        await eventually(lambda: store.synced, what="first sync")
        yield Mesh(kubesim, kube_api, source, store, registry)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_only_selected_namespaces_reach_the_model(mesh: Mesh) -> None:
    assert mesh.hosts() == {host("a", "web"), host("b", "web")}
    assert mesh.endpoints(host("a", "web")) == [("10.0.0.1", "web-sa")]
    for kind in ("Service", "EndpointSlice", "Pod"):
        assert mesh.namespaces_in_store(kind) == {"a", "b"}, kind
    # Namespaces and the control plane's own ConfigMaps are read whatever the selectors say.
    assert mesh.store.get(ObjectKey("Namespace", "", "c")) is not None
    assert mesh.store.get(ObjectKey("ConfigMap", CP_NS, "istio-sidecar-injector")) is not None


async def test_a_namespace_relabelled_into_and_out_of_scope_moves_its_objects_without_a_relist(mesh: Mesh) -> None:
    lists = mesh.lists()
    await mesh.label("c", {"mesh": "on"})
    await eventually(lambda: host("c", "web") in mesh.hosts(), what="c's service after labelling c")
    assert mesh.endpoints(host("c", "web")) == [("10.0.0.3", "web-sa")]
    assert mesh.namespaces_in_store("Pod") == {"a", "b", "c"}

    await mesh.label("a", {"mesh": None})
    await eventually(lambda: host("a", "web") not in mesh.hosts(), what="a's service gone after unlabelling a")
    assert mesh.registry.snapshot().endpoints_for(host("a", "web")).endpoints == ()
    assert mesh.namespaces_in_store("EndpointSlice") == {"b", "c"}
    assert mesh.namespaces_in_store("Pod") == {"b", "c"}
    assert mesh.lists() == lists


async def test_objects_changed_while_out_of_scope_come_back_as_they_are_now(mesh: Mesh) -> None:
    await mesh.label("a", {"mesh": None})
    await eventually(lambda: host("a", "web") not in mesh.hosts(), what="a out of scope")
    await mesh.api.request(
        "PATCH",
        "/apis/discovery.k8s.io/v1/namespaces/a/endpointslices/web-x1",
        body={"endpoints": [{"addresses": ["10.0.0.9"], "conditions": {"ready": True}}]},
        content_type=MERGE,
    )
    await mesh.api.request("DELETE", "/api/v1/namespaces/a/pods/web")
    created = workload("a", "api", "10.0.0.20")[1]
    await mesh.api.request("POST", "/api/v1/namespaces/a/services", body=created)
    await asyncio.sleep(0.3)  # the events reach the watches while a is out of scope
    assert mesh.namespaces_in_store("Service") == {"b"}

    await mesh.label("a", {"mesh": "on"})
    await eventually(lambda: host("a", "api") in mesh.hosts(), what="a back in scope")
    assert {host("a", "web"), host("a", "api")} <= mesh.hosts()
    assert mesh.endpoints(host("a", "web")) == [("10.0.0.9", "")]  # the pod is gone: no service account
    assert mesh.store.get(ObjectKey("Pod", "a", "web")) is None


async def test_editing_the_mesh_config_rescopes_at_once_without_a_relist(mesh: Mesh) -> None:
    lists = mesh.lists()
    await mesh.set_selectors(
        [{"matchLabels": {"team": "b"}}, {"matchExpressions": [{"key": "mesh", "operator": "DoesNotExist"}]}]
    )
    await eventually(
        lambda: mesh.hosts() == {host("b", "web"), host("c", "web"), host("default", "kubernetes")},
        what="b (team=b), c and default (no mesh label)",
    )
    assert mesh.source.scope.selected >= {"b", "c", "default", CP_NS}
    assert "a" not in mesh.source.scope.selected

    await mesh.set_selectors(None)  # no selectors: every namespace
    await eventually(lambda: {host(ns, "web") for ns in "abc"} <= mesh.hosts(), what="every namespace")
    assert mesh.lists() == lists


async def test_an_invalid_selector_keeps_the_last_good_scope_and_is_reported(mesh: Mesh) -> None:
    await mesh.set_selectors([{"matchExpressions": [{"key": "mesh", "operator": "Equals", "values": ["on"]}]}])
    field = "data.mesh.discoverySelectors[0].matchExpressions[0].operator"
    problems = await eventually(
        lambda: [str(p) for p in mesh.registry.problems if p.field == field], what="the mesh config problem"
    )
    assert problems == [
        f"ConfigMap/{CP_NS}/istio: {field}: 'Equals' is not a valid operator (In, NotIn, Exists, DoesNotExist)"
    ]
    await mesh.label("c", {"mesh": "on"})  # the last good selectors (mesh=on) still decide
    await eventually(lambda: host("c", "web") in mesh.hosts(), what="c selected by the last good selectors")
    assert mesh.hosts() == {host(ns, "web") for ns in "abc"}

    await mesh.set_selectors([{"matchLabels": {"team": "b"}}])
    await eventually(lambda: mesh.hosts() == {host("b", "web")}, what="the corrected selectors")
    assert not [p for p in mesh.registry.problems if p.field.startswith("data.mesh")]


async def test_deleting_a_selected_namespace_removes_its_objects(mesh: Mesh) -> None:
    await mesh.api.request("DELETE", "/api/v1/namespaces/b")
    await eventually(lambda: host("b", "web") not in mesh.hosts(), what="b's service gone with b")
    assert mesh.namespaces_in_store("Pod") == {"a"}


async def test_the_source_describes_held_and_mirrored_objects(mesh: Mesh) -> None:
    pods = mesh.source.describe()["pods@all-namespaces"]
    assert pods["held"] == 3 and pods["objects"] == 2
    assert "discovery scope" in pods["selection"]
    json.dumps(mesh.source.describe())  # served as JSON by /debug/configz
