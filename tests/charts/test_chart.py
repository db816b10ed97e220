"""charts/istiod rendered by the real helm: objects, names, RBAC, values, and the ConfigMaps as meshplane reads them.

Installing the chart into a running cluster is the cluster end-to-end test's job; here the chart is
rendered with `helm template`, checked object by object and parsed with meshplane's own parsers. The
webhooks have their own file (test_webhooks.py); lint and schema checks over every value case are in
test_render.py, installs, upgrades and uninstalls in test_lifecycle.py.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from controlplane.cli import build_parser, settings_from_args
from controlplane.model.meshconfig import MeshConfig
from tests.charts.helm import CHART, REV, VERSION, Obj, Objects, helm, render, requires_helm
from webhook import validate
from webhook.configparse import MESH_FIELDS, VALUES_FIELDS, parse_injection_config
from webhook.templates import builtin_sources

pytestmark = requires_helm


# -- the objects -------------------------------------------------------------------------------


def test_canary_renders_exactly_the_revision_objects(canary: Objects) -> None:
    assert set(canary) == {
        ("Deployment", f"istiod-{REV}"),
        ("Service", f"istiod-{REV}"),
        ("ServiceAccount", f"istiod-{REV}"),
        ("ConfigMap", f"istio-{REV}"),
        ("ConfigMap", f"istio-sidecar-injector-{REV}"),
        ("MutatingWebhookConfiguration", f"istio-sidecar-injector-{REV}"),
        ("ClusterRole", f"istiod-clusterrole-{REV}-istio-system"),
        ("ClusterRoleBinding", f"istiod-clusterrole-{REV}-istio-system"),
        ("Role", f"istiod-{REV}"),
        ("RoleBinding", f"istiod-{REV}"),
    }
    for (kind, name), obj in canary.items():
        assert obj["metadata"]["labels"]["istio.io/rev"] == REV, (kind, name)
        cluster_scoped = kind in ("MutatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding")
        assert obj["metadata"].get("namespace") == (None if cluster_scoped else "istio-system"), (kind, name)


def test_deployment_runs_meshplane_serve_for_the_revision(canary: Objects) -> None:
    deployment = canary["Deployment", f"istiod-{REV}"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    pod_labels = spec["template"]["metadata"]["labels"]
    assert pod_labels == {"app": "istiod", "istio": "istiod", "istio.io/rev": REV, "sidecar.istio.io/inject": "false"}
    assert spec["selector"] == {"matchLabels": {"app": "istiod", "istio.io/rev": REV}}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == f"istiod-{REV}"
    (container,) = pod["containers"]
    assert container["name"] == "discovery"
    assert container["image"] == f"docker.io/meshplane/pilot:{VERSION}"
    args = container["args"]
    assert args[0] == "serve"
    assert f"--revision={REV}" in args
    assert "--http-addr=:8080" in args
    assert not [arg for arg in args if arg.startswith(("--kubeconfig", "--config-dir"))], (
        "the pod uses in-cluster config"
    )
    env = {item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"] for item in container["env"]}
    assert env == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "MESHPLANE_NAMESPACE": "metadata.namespace",
    }
    assert sorted(port["containerPort"] for port in container["ports"]) == [8080, 15010, 15012, 15014, 15017]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080}
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "2048Mi"}}


@pytest.mark.parametrize(("revision", "suffix"), [("", ""), ("default", ""), (REV, f"-{REV}")])
def test_container_args_configure_meshplane_for_the_rendered_names(
    helm_home: pathlib.Path, monkeypatch: pytest.MonkeyPatch, revision: str, suffix: str
) -> None:
    """meshplane, started with the pod's args and env, looks for exactly the objects the chart made."""
    objects = render(helm_home, "--set", f"revision={revision}")
    (container,) = objects["Deployment", f"istiod{suffix}"]["spec"]["template"]["spec"]["containers"]
    monkeypatch.setenv("MESHPLANE_NAMESPACE", "istio-system")  # what the downward API gives the pod
    args = build_parser().parse_args(container["args"])
    settings = settings_from_args(args)
    assert not settings.local_mode
    assert settings.kubeconfig is None
    assert settings.namespace == "istio-system"
    assert str(settings.http_addr) == ":8080"
    assert settings.revision == (revision or "default")
    assert ("Service", settings.istiod_service) in objects
    assert ("ConfigMap", settings.injector_configmap) in objects
    assert ("ConfigMap", settings.mesh_configmap) in objects
    mesh = yaml.safe_load(objects["ConfigMap", settings.mesh_configmap]["data"]["mesh"])
    assert mesh["defaultConfig"]["discoveryAddress"] == settings.discovery_address


def test_deployment_takes_replicas_resources_and_images_from_values(helm_home: pathlib.Path) -> None:
    objects = render(
        helm_home,
        "--set", f"revision={REV}",
        "--set", "pilot.replicaCount=2",
        "--set", "pilot.resources.requests.cpu=1",
        "--set", "pilot.resources.limits.memory=4Gi",
        "--set", "hub=registry.example/mesh",
        "--set", "tag=1.2.3",
    )  # fmt: skip
    spec = objects["Deployment", f"istiod-{REV}"]["spec"]
    assert spec["replicas"] == 2
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/mesh/pilot:1.2.3"
    assert container["resources"] == {"requests": {"cpu": 1, "memory": "2048Mi"}, "limits": {"memory": "4Gi"}}


def test_pilot_env_reaches_the_container_as_text_and_serve_reads_it(helm_home: pathlib.Path) -> None:
    objects = render(
        helm_home,
        "--set", f"revision={REV}",
        "--set", "pilot.env.MESHPLANE_MAX_STREAMS_PER_CLIENT=400",
        "--set", "pilot.env.MESHPLANE_LOG_FORMAT=json",
    )  # fmt: skip
    (container,) = objects["Deployment", f"istiod-{REV}"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MESHPLANE_MAX_STREAMS_PER_CLIENT"] == "400" and env["MESHPLANE_LOG_FORMAT"] == "json"
    assert "MESHPLANE_NAMESPACE" in env  # the chart's own are kept


def test_service_exposes_xds_ca_webhook_and_metrics(canary: Objects) -> None:
    service = canary["Service", f"istiod-{REV}"]["spec"]
    ports = {port["name"]: (port["port"], port["targetPort"]) for port in service["ports"]}
    assert ports == {
        "grpc-xds": (15010, 15010),
        "https-dns": (15012, 15012),
        "https-webhook": (443, 15017),
        "http-monitoring": (15014, 15014),
    }
    assert service["selector"] == {"app": "istiod", "istio.io/rev": REV}
    pod_labels = canary["Deployment", f"istiod-{REV}"]["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[key] == value for key, value in service["selector"].items())


# -- RBAC --------------------------------------------------------------------------------------


def rules(obj: Obj) -> set[tuple[str, str, tuple[str, ...]]]:
    return {
        (group, resource, tuple(sorted(rule["verbs"])))
        for rule in obj["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_rbac_grants_exactly_what_meshplane_uses(canary: Objects) -> None:
    read = ("list", "watch")
    cluster_role = canary["ClusterRole", f"istiod-clusterrole-{REV}-istio-system"]
    assert rules(cluster_role) == {
        ("", "namespaces", read),
        ("", "services", read),
        ("", "pods", read),
        ("discovery.k8s.io", "endpointslices", read),
        ("security.istio.io", "peerauthentications", read),
        ("", "configmaps", ("create", "get", "list", "update", "watch")),
        ("authentication.k8s.io", "tokenreviews", ("create",)),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", ("list", "patch", "watch")),
    }
    role = canary["Role", f"istiod-{REV}"]
    assert role["metadata"]["namespace"] == "istio-system"
    assert rules(role) == {
        ("", "secrets", ("create", "get", "update")),
        ("coordination.k8s.io", "leases", ("create", "get", "update")),
    }
    assert not any(rule.get("resourceNames") for rule in cluster_role["rules"] + role["rules"])
    subject = [{"kind": "ServiceAccount", "name": f"istiod-{REV}", "namespace": "istio-system"}]
    for kind, role_kind, name in (
        ("ClusterRoleBinding", "ClusterRole", f"istiod-clusterrole-{REV}-istio-system"),
        ("RoleBinding", "Role", f"istiod-{REV}"),
    ):
        binding = canary[kind, name]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name}
        assert binding["subjects"] == subject


# -- the ConfigMaps, as meshplane reads them ---------------------------------------------------


def test_injector_configmap_parses_and_names_the_proxy_image(canary: Objects) -> None:
    injector = canary["ConfigMap", f"istio-sidecar-injector-{REV}"]["data"]
    mesh = canary["ConfigMap", f"istio-{REV}"]["data"]
    config = parse_injection_config(injector=injector, mesh=mesh)
    assert config.proxy_image == f"docker.io/meshplane/proxyv2:{VERSION}"
    assert config.proxy_init_image == f"docker.io/meshplane/proxyv2:{VERSION}"
    assert config.policy == "enabled"
    assert config.native_sidecar is True
    assert config.proxy_config["discoveryAddress"] == f"istiod-{REV}.istio-system.svc:15012"
    assert config.resources.to_dict() == {
        "limits": {"cpu": "2000m", "memory": "1024Mi"},
        "requests": {"cpu": "100m", "memory": "128Mi"},
    }


def test_injector_values_pass_through_to_meshplane(helm_home: pathlib.Path) -> None:
    selector = [{"matchLabels": {"team": "batch"}}]
    objects = render(
        helm_home,
        "--set", f"revision={REV}",
        "--set", "hub=registry.example/mesh",
        "--set", "tag=1.2.3",
        "--set", "global.proxy.autoInject=disabled",
        "--set", "global.proxy.excludeInboundPorts=9000\\,9001",
        "--set", "global.proxy.interceptionMode=NONE",
        "--set", "global.imagePullPolicy=IfNotPresent",
        "--set", "sidecarInjectorWebhook.nativeSidecar=false",
        "--set-json", f"sidecarInjectorWebhook.neverInjectSelector={json.dumps(selector)}",
        "--set", "sidecarInjectorWebhook.injectedAnnotations.team=mesh",
    )  # fmt: skip
    config = parse_injection_config(injector=objects["ConfigMap", f"istio-sidecar-injector-{REV}"]["data"], mesh=None)
    assert config.proxy_image == "registry.example/mesh/proxyv2:1.2.3"
    assert config.policy == "disabled"
    assert config.exclude_inbound_ports == "9000,9001"
    assert config.interception_mode == "NONE"
    assert config.image_pull_policy == "IfNotPresent"
    assert config.native_sidecar is False
    assert [s.to_dict() for s in config.never_inject_selector] == selector
    assert dict(config.injected_annotations) == {"team": "mesh"}


def test_mesh_configmap_parses_with_meshplanes_parsers(helm_home: pathlib.Path) -> None:
    objects = render(
        helm_home,
        "--set", f"revision={REV}",
        "--set", "meshConfig.trustDomain=example.org",
        "--set-json", 'meshConfig.discoverySelectors=[{"matchLabels":{"mesh":"on"}}]',
        "--set", "meshConfig.defaultConfig.concurrency=2",
    )  # fmt: skip
    configmap = objects["ConfigMap", f"istio-{REV}"]
    mesh = MeshConfig.from_configmap(configmap)
    assert mesh.trust_domain == "example.org"
    assert mesh.root_namespace == "istio-system"
    raw = yaml.safe_load(configmap["data"]["mesh"])
    assert raw["discoverySelectors"] == [{"matchLabels": {"mesh": "on"}}]
    assert raw["defaultConfig"] == {"concurrency": 2, "discoveryAddress": f"istiod-{REV}.istio-system.svc:15012"}
    config = parse_injection_config(injector=None, mesh=configmap["data"])
    assert config.trust_domain == "example.org"
    args = objects["Deployment", f"istiod-{REV}"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--trust-domain=example.org" in args  # the CA signs for the trust domain the mesh config names


def test_chart_ships_meshplanes_builtin_templates_unchanged() -> None:
    for name, source in builtin_sources().items():
        assert (CHART / "files" / f"{name}.yaml").read_text(encoding="utf-8") == source, (
            f"copy webhook/builtin/{name}.yaml"
        )


def test_injector_configmap_carries_the_templates_meshplane_uses_by_default(canary: Objects) -> None:
    data = canary["ConfigMap", f"istio-sidecar-injector-{REV}"]["data"]
    assert set(yaml.safe_load(data["config"])["templates"]) == {"sidecar", "gateway", "grpc-simple", "grpc-agent"}
    config = parse_injection_config(injector=data, mesh=None)
    assert config.templates.sources == builtin_sources()
    assert config.default_templates == ("sidecar",)


def test_user_templates_from_values_reach_the_injector(helm_home: pathlib.Path) -> None:
    team = "metadata:\n  labels:\n    team: {{ pod.metadata.labels.get('team', 'none') | tojson }}\n"
    objects = render(
        helm_home,
        "--set", f"revision={REV}",
        "--set-json", f"sidecarInjectorWebhook.templates={json.dumps({'team': team})}",
        "--set-json", 'sidecarInjectorWebhook.defaultTemplates=["sidecar","team"]',
    )  # fmt: skip
    config = parse_injection_config(injector=objects["ConfigMap", f"istio-sidecar-injector-{REV}"]["data"], mesh=None)
    assert config.templates.sources["team"] == team
    assert config.templates.sources["sidecar"] == builtin_sources()["sidecar"]
    assert config.default_templates == ("sidecar", "team")


# -- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "where", "problem"),
    [
        (("--set", "pilot.replicas=2"), "/pilot", "additional properties 'replicas' not allowed"),
        (("--set", "revsion=x"), "", "additional properties 'revsion' not allowed"),
        (("--set", "meshConfig.defaultConfig.concurency=2"), "/meshConfig/defaultConfig", "'concurency' not allowed"),
        (("--set", "revision=Canary_1"), "/revision", "does not match pattern"),
        (
            ("--set", "global.proxy.interceptionMode=TPROXY"),
            "/global/proxy/interceptionMode",
            "must be one of 'REDIRECT', 'NONE'",
        ),
        (
            ("--set", "meshConfig.defaultConfig.interceptionMode=TPROXY"),
            "/meshConfig/defaultConfig/interceptionMode",
            "must be one of 'REDIRECT', 'NONE'",
        ),
        (("--set-json", 'pilot.env={"1BAD":"x"}'), "", "invalid propertyName '1BAD'"),
        (("--set-json", 'pilot.env={"A":{"b":1}}'), "/pilot/env/A", ""),
        (("--set-json", "sidecarInjectorWebhook.defaultTemplates=[]"), "/sidecarInjectorWebhook/defaultTemplates", ""),
        (
            ("--set", "sidecarInjectorWebhook.reinvocationPolicy=Always"),
            "/sidecarInjectorWebhook/reinvocationPolicy",
            "",
        ),
    ],
)
def test_bad_values_are_refused_naming_them(
    helm_home: pathlib.Path, args: tuple[str, ...], where: str, problem: str
) -> None:
    result = helm(helm_home, "template", "istiod", str(CHART), *args, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert f"- at '{where}'" in result.stderr
    assert problem in result.stderr


def schema_properties(*path: str) -> set[str]:
    node = json.loads((CHART / "values.schema.json").read_text())
    for name in path:
        node = node["properties"][name]
    assert node["additionalProperties"] is False
    return set(node["properties"])


def test_schema_offers_exactly_what_meshplane_reads() -> None:
    """The schema and meshplane's parsers list the same fields, so a value is neither lost nor refused at run time."""
    assert schema_properties("global", "proxy") == set(VALUES_FIELDS["global"]["proxy"]) | {"autoInject"}
    assert schema_properties("global", "proxy_init") == set(VALUES_FIELDS["global"]["proxy_init"])
    assert schema_properties("global") == (set(VALUES_FIELDS["global"]) - {"hub", "tag"})
    assert schema_properties("meshConfig", "defaultConfig") == set(validate.PROXY_CONFIG_FIELDS)
    assert schema_properties("meshConfig") <= set(MESH_FIELDS)


def test_schema_offers_the_interception_modes_meshplane_supports() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    for where in (schema["global"]["properties"]["proxy"], schema["meshConfig"]["properties"]["defaultConfig"]):
        assert tuple(where["properties"]["interceptionMode"]["enum"]) == validate.INTERCEPTION_MODES


def test_default_tag_and_chart_version_are_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == values["tag"] == VERSION
    assert values["hub"] == "docker.io/meshplane"
    assert values["revision"] == ""
