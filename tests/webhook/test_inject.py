"""Behaviour of `inject_pod` beyond the golden files: configuration, identity, strip-and-redo,
malformed pods, and properties over generated pods."""

from __future__ import annotations

import copy
import json
from types import MappingProxyType
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from webhook.config import InjectionConfig
from webhook.configparse import parse_injection_config
from webhook.inject import InjectionError, InjectionParams, InvalidPod, inject_pod, workload_identity
from webhook.patch import json_patch

DEFAULTS = InjectionConfig()


def params(config: InjectionConfig = DEFAULTS, **overrides: Any) -> InjectionParams:
    values: dict[str, Any] = {
        "revision": "default",
        "namespace": "shop",
        "config": config,
        "discovery_address": "istiod.istio-system.svc:15012",
        "trust_domain": "cluster.local",
        "cluster_id": "Kubernetes",
    }
    values.update(overrides)
    return InjectionParams(**values)


def pod(
    *, annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    spec.setdefault("containers", [{"name": "app", "image": "example.com/app:1", "ports": [{"containerPort": 8080}]}])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app-1", "labels": dict(labels or {"app": "app"}), "annotations": dict(annotations or {})},
        "spec": spec,
    }


def inject(p: dict[str, Any], prm: InjectionParams | None = None) -> dict[str, Any]:
    return inject_pod(copy.deepcopy(p), prm or params())


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def proxy_of(p: dict[str, Any]) -> dict[str, Any]:
    spec = p["spec"]
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "istio-proxy"]
    assert len(found) == 1
    return found[0]


def names(containers: list[dict[str, Any]] | None) -> list[str]:
    return [c["name"] for c in containers or []]


# -- placement and template ----------------------------------------------------------------------


def test_native_sidecar_goes_after_istio_init_and_before_user_init_containers() -> None:
    out = inject(pod(initContainers=[{"name": "migrate", "image": "m"}]))
    assert names(out["spec"]["initContainers"]) == ["istio-init", "istio-proxy", "migrate"]
    assert proxy_of(out)["restartPolicy"] == "Always"
    assert names(out["spec"]["containers"]) == ["app"]


def test_config_can_make_the_classic_sidecar_the_default() -> None:
    config = parse_injection_config(injector={"values": "sidecarInjectorWebhook:\n  nativeSidecar: false\n"}, mesh=None)
    out = inject(pod(), params(config))
    assert names(out["spec"]["containers"]) == ["app", "istio-proxy"]
    assert "restartPolicy" not in proxy_of(out)
    assert names(out["spec"]["initContainers"]) == ["istio-init"]
    status = json.loads(out["metadata"]["annotations"]["sidecar.istio.io/status"])
    assert status["initContainers"] == ["istio-init"] and status["containers"] == ["istio-proxy"]


def test_annotation_turns_native_sidecar_back_on_over_config() -> None:
    config = InjectionConfig(native_sidecar=False)
    out = inject(pod(annotations={"sidecar.istio.io/nativeSidecar": "true"}), params(config))
    assert names(out["spec"]["initContainers"]) == ["istio-init", "istio-proxy"]


def test_ca_and_discovery_address_follow_the_revision() -> None:
    out = inject(pod(), params(revision="canary", discovery_address="istiod-canary.istio-system.svc:15012"))
    values = env(proxy_of(out))
    assert values["CA_ADDR"] == "istiod-canary.istio-system.svc:15012"
    assert json.loads(values["PROXY_CONFIG"])["discoveryAddress"] == "istiod-canary.istio-system.svc:15012"
    annotations = out["metadata"]["annotations"]
    assert annotations["istio.io/rev"] == "canary"
    assert json.loads(annotations["sidecar.istio.io/status"])["revision"] == "canary"
    assert "istio.io/rev" not in out["metadata"]["labels"]


def test_cluster_and_network_from_params_with_the_network_label_winning() -> None:
    out = inject(pod(), params(cluster_id="east", network="net-a"))
    assert env(proxy_of(out))["ISTIO_META_CLUSTER_ID"] == "east"
    assert env(proxy_of(out))["ISTIO_META_NETWORK"] == "net-a"
    labelled = inject(pod(labels={"app": "a", "topology.istio.io/network": "net-b"}), params(network="net-a"))
    assert env(proxy_of(labelled))["ISTIO_META_NETWORK"] == "net-b"
    assert "ISTIO_META_NETWORK" not in env(proxy_of(inject(pod())))


def test_mesh_config_sets_trust_domain_mesh_id_and_proxy_config_defaults() -> None:
    config = parse_injection_config(
        injector={"values": '{"global": {"meshID": "mesh-1", "imagePullPolicy": "Always"}}'},
        mesh={"mesh": "trustDomain: example.org\ndefaultConfig:\n  concurrency: 2\n  statusPort: 15120\n"},
    )
    out = inject(pod(annotations={"proxy.istio.io/config": "concurrency: 8"}), params(config))
    values = env(proxy_of(out))
    assert values["TRUST_DOMAIN"] == "example.org"
    assert values["ISTIO_META_MESH_ID"] == "mesh-1"
    assert json.loads(values["PROXY_CONFIG"]) == {
        "concurrency": 8,
        "discoveryAddress": "istiod.istio-system.svc:15012",
        "statusPort": 15120,
    }
    assert proxy_of(out)["imagePullPolicy"] == "Always"
    assert out["metadata"]["annotations"]["prometheus.io/port"] == "15120"
    init_args = out["spec"]["initContainers"][0]["args"]
    assert init_args[init_args.index("-d") + 1] == "15090,15021,15120"


def test_image_type_in_proxy_config_decorates_the_configured_tag() -> None:
    out = inject(pod(annotations={"proxy.istio.io/config": "image:\n  imageType: distroless"}))
    assert proxy_of(out)["image"] == "docker.io/istio/proxyv2:1.28.0-distroless"
    assert out["spec"]["initContainers"][0]["image"] == "docker.io/istio/proxyv2:1.28.0-distroless"


def test_image_pull_secrets_from_config_are_added_once_and_listed_in_status() -> None:
    config = InjectionConfig(image_pull_secrets=("mesh-registry", "shared"))
    out = inject(pod(imagePullSecrets=[{"name": "shared"}]), params(config))
    assert out["spec"]["imagePullSecrets"] == [{"name": "shared"}, {"name": "mesh-registry"}]
    status = json.loads(out["metadata"]["annotations"]["sidecar.istio.io/status"])
    assert status["imagePullSecrets"] == ["mesh-registry"]
    assert inject(out, params(config)) == out


def test_injected_annotations_from_config_are_set() -> None:
    config = InjectionConfig(injected_annotations=MappingProxyType({"example.com/injected": "yes"}))
    assert inject(pod(), params(config))["metadata"]["annotations"]["example.com/injected"] == "yes"


def test_a_user_volume_with_an_injected_name_is_kept_and_not_claimed() -> None:
    mine = {"name": "istio-data", "persistentVolumeClaim": {"claimName": "data"}}
    out = inject(pod(volumes=[mine]))
    assert [v for v in out["spec"]["volumes"] if v["name"] == "istio-data"] == [mine]
    status = json.loads(out["metadata"]["annotations"]["sidecar.istio.io/status"])
    assert "istio-data" not in status["volumes"]
    assert inject(out) == out


def test_proxy_metadata_becomes_proxy_environment() -> None:
    annotation = '{"proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true", "ISTIO_META_CLUSTER_ID": "override"}}'
    values = env(proxy_of(inject(pod(annotations={"proxy.istio.io/config": annotation}))))
    assert values["ISTIO_META_DNS_CAPTURE"] == "true"
    assert values["ISTIO_META_CLUSTER_ID"] == "override"


# -- workload identity ---------------------------------------------------------------------------


def _owned(kind: str, name: str, api: str = "apps/v1", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": labels or {},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": "not-a-controller"},
                {"apiVersion": api, "kind": kind, "name": name, "controller": True},
            ],
        }
    }


@pytest.mark.parametrize(
    ("pod_", "expected"),
    [
        (
            _owned("ReplicaSet", "web-5d8f9c", labels={"pod-template-hash": "5d8f9c"}),
            ("web", "kubernetes://apis/apps/v1/namespaces/shop/deployments/web"),
        ),
        (
            _owned("ReplicaSet", "web-5d8f9c", labels={"pod-template-hash": "other"}),
            ("web-5d8f9c", "kubernetes://apis/apps/v1/namespaces/shop/replicasets/web-5d8f9c"),
        ),
        (_owned("StatefulSet", "db"), ("db", "kubernetes://apis/apps/v1/namespaces/shop/statefulsets/db")),
        (
            _owned("Job", "report-28912345", api="batch/v1"),
            ("report", "kubernetes://apis/batch/v1/namespaces/shop/cronjobs/report"),
        ),
        (
            _owned("Job", "migrate-v2", api="batch/v1"),
            ("migrate-v2", "kubernetes://apis/batch/v1/namespaces/shop/jobs/migrate-v2"),
        ),
        ({"metadata": {"name": "solo"}}, ("solo", "kubernetes://apis/v1/namespaces/shop/pods/solo")),
        ({"metadata": {"generateName": "solo-"}}, ("solo", "kubernetes://apis/v1/namespaces/shop/pods/solo")),
    ],
)
def test_workload_identity_follows_the_controller(pod_: dict[str, Any], expected: tuple[str, str]) -> None:
    assert workload_identity(pod_, namespace="shop") == expected


def test_workload_override_wins_over_owner_references() -> None:
    prm = params(workload_name="web", workload_kind="Deployment", workload_api_version="apps/v1")
    assert workload_identity(_owned("StatefulSet", "db"), namespace="shop", params=prm) == (
        "web",
        "kubernetes://apis/apps/v1/namespaces/shop/deployments/web",
    )


def test_malformed_owner_references_are_reported_by_field() -> None:
    with pytest.raises(InvalidPod, match=r"metadata\.ownerReferences\[0\]\.name"):
        workload_identity(
            {"metadata": {"ownerReferences": [{"kind": "Job", "controller": True, "apiVersion": "v1"}]}}, namespace="x"
        )


# -- strip and redo ------------------------------------------------------------------------------


def test_reinjection_keeps_probers_of_already_rewritten_probes_and_adds_new_ones() -> None:
    original = pod()
    original["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/ready", "port": 8080}}
    once = inject(original)
    once["spec"]["containers"][0]["livenessProbe"] = {"tcpSocket": {"port": 8080}}
    twice = inject(once)
    probers = json.loads(env(proxy_of(twice))["ISTIO_KUBE_APP_PROBERS"])
    assert probers == {
        "/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": 8080}},
        "/app-health/app/livez": {"tcpSocket": {"port": 8080}},
    }
    assert twice["spec"]["containers"][0]["readinessProbe"] == {
        "httpGet": {"path": "/app-health/app/readyz", "port": 15020}
    }


def test_reinjection_with_another_revision_replaces_the_sidecar() -> None:
    once = inject(pod())
    canary = inject(once, params(revision="canary", discovery_address="istiod-canary.istio-system.svc:15012"))
    assert canary == inject(pod(), params(revision="canary", discovery_address="istiod-canary.istio-system.svc:15012"))


def test_reinjection_restores_the_users_prometheus_annotations_first() -> None:
    original = pod(annotations={"prometheus.io/port": "9102", "prometheus.io/scrape": "true"})
    once = inject(original)
    saved = json.loads(env(proxy_of(once))["ISTIO_PROMETHEUS_ANNOTATIONS"])
    assert saved == {"scrape": "true", "path": "", "port": "9102"}
    merge_off = copy.deepcopy(once)
    merge_off["metadata"]["annotations"]["prometheus.istio.io/merge-metrics"] = "false"
    redone = inject(merge_off)
    assert redone["metadata"]["annotations"]["prometheus.io/port"] == "9102"
    assert "prometheus.io/path" not in redone["metadata"]["annotations"]
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" not in env(proxy_of(redone))


@pytest.mark.parametrize(
    ("annotations", "named"),
    [
        ({"prometheus.io/port": "15090"}, "15090 (Envoy Prometheus)"),
        ({"prometheus.io/port": "15000"}, "15000 (Envoy admin)"),
        # the default status port, while this pod's agent listens on another: still the sidecar's
        ({"prometheus.io/port": "15020", "status.sidecar.istio.io/port": "15120"}, "15020 (agent status)"),
    ],
)
def test_a_prometheus_port_of_the_sidecar_is_left_alone_with_a_warning(annotations: dict[str, str], named: str) -> None:
    # Merged, the agent would be told to scrape its own sidecar (and refuse to start): not merged.
    original = pod(annotations={**annotations, "prometheus.io/scrape": "true"})
    warnings: list[str] = []
    injected = inject_pod(copy.deepcopy(original), params(), warnings=warnings)
    assert injected["metadata"]["annotations"]["prometheus.io/port"] == annotations["prometheus.io/port"]
    assert "prometheus.io/path" not in injected["metadata"]["annotations"]
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" not in env(proxy_of(injected))
    assert len(warnings) == 1 and f"prometheus.io/port {named} is a port of the sidecar" in warnings[0]


def test_a_prometheus_port_that_is_the_agents_status_port_is_a_reinjection_and_no_warning() -> None:
    warnings: list[str] = []
    injected = inject_pod(copy.deepcopy(pod(annotations={"prometheus.io/port": "15020"})), params(), warnings=warnings)
    assert injected["metadata"]["annotations"]["prometheus.io/port"] == "15020"
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" not in env(proxy_of(injected))
    assert warnings == []


def test_a_user_override_survives_reinjection_and_can_be_removed_with_the_status() -> None:
    original = pod()
    original["spec"]["containers"].append(
        {"name": "istio-proxy", "image": "mine:1", "env": [{"name": "X", "value": "1"}]}
    )
    once = inject(original)
    assert proxy_of(once)["image"] == "mine:1"
    assert env(proxy_of(once))["X"] == "1"
    assert inject(once) == once


def test_override_of_istio_init_merges_into_it() -> None:
    original = pod(initContainers=[{"name": "istio-init", "resources": {"limits": {"memory": "64Mi"}}}])
    out = inject(original)
    init = out["spec"]["initContainers"][0]
    assert init["name"] == "istio-init"
    assert init["resources"]["limits"] == {"cpu": "2000m", "memory": "64Mi"}
    assert init["args"][0] == "istio-iptables"
    assert inject(out) == out


def test_status_that_is_not_json_is_rejected_naming_the_annotation() -> None:
    with pytest.raises(InjectionError) as caught:
        inject(pod(annotations={"sidecar.istio.io/status": "{broken"}))
    assert caught.value.annotation == "sidecar.istio.io/status"
    assert caught.value.value == "{broken"


def test_pod_injected_by_istio_with_a_plain_status_is_reinjected_cleanly() -> None:
    once = inject(pod())
    annotations = once["metadata"]["annotations"]
    status = json.loads(annotations["sidecar.istio.io/status"])
    annotations["sidecar.istio.io/status"] = json.dumps(
        {k: status[k] for k in ("initContainers", "containers", "volumes", "imagePullSecrets", "revision")}
    )
    assert inject(once) == inject(pod())


# -- malformed pods ------------------------------------------------------------------------------


def _proxy(**fields: Any) -> dict[str, Any]:
    return {"name": "istio-proxy", **fields}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.update(spec=[]), "spec"),
        (lambda p: p["spec"].update(containers="app"), "spec.containers"),
        (lambda p: p["spec"].update(containers=[]), "spec.containers"),
        (lambda p: p["spec"].update(containers=["app"]), r"spec.containers\[0\]"),
        (lambda p: p["spec"]["containers"][0].pop("name"), r"spec.containers\[0\].name"),
        (lambda p: p["spec"]["containers"][0].update(readinessProbe="GET /"), r"spec.containers\[0\].readinessProbe"),
        (
            lambda p: p["spec"]["containers"][0].update(livenessProbe={"httpGet": 8080}),
            r"spec.containers\[0\].livenessProbe.httpGet",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(livenessProbe={"tcpSocket": {}}),
            r"spec.containers\[0\].livenessProbe.tcpSocket.port",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(startupProbe={"grpc": {"port": "grpc"}}),
            r"spec.containers\[0\].startupProbe.grpc.port",
        ),
        (lambda p: p["spec"]["containers"][0].update(env={"A": "1"}), r"spec.containers\[0\].env"),
        (
            lambda p: p["spec"]["containers"][0].update(env=[{"name": "A", "value": 1}]),
            r"spec.containers\[0\].env\[0\].value",
        ),
        (lambda p: p["spec"]["containers"][0].update(args="serve"), r"spec.containers\[0\].args"),
        # the user's own istio-proxy is merged into the injected one: its fields are checked where they were
        (lambda p: p["spec"]["containers"].append(_proxy(env={"": None})), r"spec.containers\[1\].env"),
        (lambda p: p["spec"]["containers"].append(_proxy(env=[{"name": []}])), r"spec.containers\[1\].env\[0\].name"),
        (lambda p: p["spec"]["containers"].append(_proxy(env=[{"name": None}])), r"spec.containers\[1\].env\[0\].name"),
        (
            lambda p: p["spec"]["containers"].append(_proxy(env=[{"name": "A", "value": ["x"]}])),
            r"spec.containers\[1\].env\[0\].value",
        ),
        (
            lambda p: p["spec"]["containers"].append(_proxy(env=[{"name": "A", "valueFrom": {"fieldRef": {}}}])),
            r"spec.containers\[1\].env\[0\].valueFrom.fieldRef.fieldPath",
        ),
        (lambda p: p["spec"]["containers"].append(_proxy(args=["--x", 3])), r"spec.containers\[1\].args\[1\]"),
        (
            lambda p: p["spec"].update(initContainers=[{"name": "istio-init", "command": "sh"}]),
            r"spec.initContainers\[0\].command",
        ),
        (lambda p: p["spec"].update(initContainers=[{"image": "x"}]), r"spec.initContainers\[0\].name"),
        (lambda p: p["spec"].update(volumes={"a": {}}), "spec.volumes"),
        (lambda p: p["metadata"].update(annotations=["a"]), "metadata.annotations"),
        (lambda p: p["metadata"]["labels"].update(version=2), "metadata.labels.version"),
    ],
)
def test_malformed_pod_is_reported_by_field(mutate: Any, field: str) -> None:
    p = pod()
    mutate(p)
    with pytest.raises(InvalidPod, match=f"^{field}"):
        inject(p)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70000) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)
_probe = st.one_of(
    _json,
    st.fixed_dictionaries({"httpGet": st.one_of(_json, st.fixed_dictionaries({"port": _json, "path": _json}))}),
    st.fixed_dictionaries({"tcpSocket": st.fixed_dictionaries({"port": st.one_of(_json, st.just("http"))})}),
    st.fixed_dictionaries({"grpc": st.fixed_dictionaries({"port": _json})}),
)
_container = st.one_of(
    _json,
    st.fixed_dictionaries(
        {"name": st.one_of(st.just("app"), st.just("istio-proxy"), _json)},
        optional={
            "ports": st.one_of(
                _json, st.lists(st.fixed_dictionaries({"name": _json, "containerPort": _json}), max_size=2)
            ),
            "env": st.one_of(
                _json,
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.one_of(_json, st.sampled_from(["ISTIO_META_CLUSTER_ID", "SECRET_TTL"]))},
                        optional={"value": _json, "valueFrom": _json},
                    ),
                    max_size=2,
                ),
            ),
            "args": st.one_of(_json, st.lists(st.one_of(st.text(max_size=8), _json), max_size=3)),
            "command": _json,
            "readinessProbe": _probe,
            "livenessProbe": _probe,
            "volumeMounts": _json,
        },
    ),
)
_annotations = st.dictionaries(
    st.sampled_from(
        [
            "sidecar.istio.io/status",
            "sidecar.istio.io/proxyCPU",
            "sidecar.istio.io/proxyCPULimit",
            "proxy.istio.io/config",
            "traffic.sidecar.istio.io/includeInboundPorts",
            "inject.istio.io/templates",
            "sidecar.istio.io/nativeSidecar",
            "prometheus.io/port",
        ]
    ),
    st.one_of(st.text(max_size=6), st.sampled_from(["{}", '{"containers": 3}', "true", "1", "*", "grpc-agent", "[]"])),
    max_size=3,
)
_pod = st.fixed_dictionaries(
    {
        "metadata": st.one_of(
            _json,
            st.fixed_dictionaries(
                {"annotations": st.one_of(_annotations, _json), "labels": _json, "ownerReferences": _json}
            ),
        ),
        "spec": st.one_of(
            _json,
            st.fixed_dictionaries(
                {"containers": st.one_of(_json, st.lists(_container, max_size=3))},
                optional={"initContainers": st.one_of(_json, st.lists(_container, max_size=2)), "volumes": _json},
            ),
        ),
    }
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_pod)
@example({"metadata": None, "spec": {"containers": [{"name": "istio-proxy", "env": [{"name": [], "value": None}]}]}})
@example({"metadata": None, "spec": {"containers": [{"name": "istio-proxy", "env": [{"name": None, "value": None}]}]}})
@example({"metadata": None, "spec": {"containers": [{"name": "istio-proxy", "env": {"": None}}]}})
def test_any_pod_is_injected_or_rejected_with_a_precise_error(p: dict[str, Any]) -> None:
    try:
        inject(p)
    except (InjectionError, InvalidPod) as exc:
        assert str(exc)


_valid_container = st.fixed_dictionaries(
    {"name": st.sampled_from(["app", "web", "worker", "cache"]), "image": st.just("example.com/x:1")},
    optional={
        "ports": st.lists(st.fixed_dictionaries({"containerPort": st.integers(1, 65535)}), max_size=2),
        "readinessProbe": st.sampled_from(
            [{"httpGet": {"path": "/r", "port": 8080}}, {"tcpSocket": {"port": 81}}, {"exec": {"command": ["true"]}}]
        ),
        "livenessProbe": st.sampled_from(
            [{"grpc": {"port": 9000}}, {"httpGet": {"path": "/l", "port": 8081, "scheme": "HTTPS"}}]
        ),
    },
)
_valid_pod = st.builds(
    lambda containers, annotations, labels: pod(
        containers=list({c["name"]: c for c in containers}.values()), annotations=annotations, labels=labels
    ),
    st.lists(_valid_container, min_size=1, max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "sidecar.istio.io/nativeSidecar": st.sampled_from(["true", "false"]),
            "sidecar.istio.io/interceptionMode": st.sampled_from(["REDIRECT", "TPROXY", "NONE"]),
            "inject.istio.io/templates": st.sampled_from(["sidecar", "grpc-agent"]),
            "prometheus.io/port": st.sampled_from(["9090", "15020"]),
            "sidecar.istio.io/rewriteAppHTTPProbers": st.sampled_from(["true", "false"]),
            "proxy.istio.io/config": st.sampled_from(
                ["holdApplicationUntilProxyStarts: true", "{}", "statusPort: 15999"]
            ),
        },
    ),
    st.dictionaries(
        st.sampled_from(["app", "version", "app.kubernetes.io/name"]), st.sampled_from(["a", "b"]), max_size=2
    ),
)


@settings(max_examples=150, deadline=None)
@given(_valid_pod)
def test_injection_is_idempotent_and_its_patch_applies(p: dict[str, Any]) -> None:
    p = json.loads(json.dumps(p))  # a JSON document has no shared sub-objects
    try:
        once = inject(p)
    except InjectionError as exc:  # TPROXY, and grpc-agent with REDIRECT, are documented rejections
        assert exc.annotation == "sidecar.istio.io/interceptionMode"
        return
    assert inject(once) == once
    assert jsonpatch.apply_patch(p, json_patch(p, once)) == once
