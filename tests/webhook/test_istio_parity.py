"""Injection behaviour that must match Istio's injector, one test per behaviour, named for it."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.webhook.test_inject import env, inject, params, pod, proxy_of
from webhook.configparse import parse_injection_config
from webhook.inject import InjectionError

CLASSIC = parse_injection_config(injector={"values": "sidecarInjectorWebhook:\n  nativeSidecar: false\n"}, mesh=None)


def init_args(p: dict[str, Any]) -> list[str]:
    init = next(c for c in p["spec"]["initContainers"] if c["name"] == "istio-init")
    return list(init["args"])


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def probers(p: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(env(proxy_of(p))["ISTIO_KUBE_APP_PROBERS"]))


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("status.sidecar.istio.io/port", "15020"),
        ("readiness.status.sidecar.istio.io/initialDelaySeconds", "2"),
        ("readiness.status.sidecar.istio.io/periodSeconds", "5"),
        ("readiness.status.sidecar.istio.io/failureThreshold", "30"),
        ("readiness.status.sidecar.istio.io/applicationPorts", "8080"),
        ("sidecar.istio.io/userVolume", '{"certs":{"secret":{"secretName":"app-certs"}}}'),
        ("sidecar.istio.io/userVolumeMount", '{"certs":{"mountPath":"/etc/certs","readOnly":true}}'),
        ("traffic.sidecar.istio.io/kubevirtInterfaces", "net1"),
        ("istio.io/reroute-virtual-interfaces", "net1,net2"),
        ("proxy.istio.io/overrides", '{"containers":[{"name":"istio-proxy","image":"auto"}]}'),
    ],
)
def test_annotations_of_istio_injected_pods_are_accepted(annotation: str, value: str) -> None:
    injected = inject(pod(annotations={annotation: value}))
    assert injected["metadata"]["annotations"][annotation] == value


def test_readiness_annotations_and_status_port_shape_the_proxy_probes() -> None:
    annotations = {
        "readiness.status.sidecar.istio.io/initialDelaySeconds": "2",
        "readiness.status.sidecar.istio.io/periodSeconds": "5",
        "readiness.status.sidecar.istio.io/failureThreshold": "30",
    }
    readiness = proxy_of(inject(pod(annotations=annotations)))["readinessProbe"]
    assert (readiness["initialDelaySeconds"], readiness["periodSeconds"], readiness["failureThreshold"]) == (2, 5, 30)
    http_app = {"name": "app", "image": "a", "readinessProbe": {"httpGet": {"path": "/ok", "port": 8080}}}
    moved = inject(pod(annotations={"status.sidecar.istio.io/port": "15099"}, containers=[http_app]))
    assert moved["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] == 15099
    assert "15099" in flag(init_args(moved), "-d").split(",")
    assert json.loads(env(proxy_of(moved))["PROXY_CONFIG"])["statusPort"] == 15099


def test_status_port_zero_means_no_proxy_probes_and_no_probe_rewriting() -> None:
    http_app = {"name": "app", "image": "a", "readinessProbe": {"httpGet": {"path": "/ok", "port": 8080}}}
    injected = inject(pod(annotations={"status.sidecar.istio.io/port": "0"}, containers=[http_app]))
    proxy = proxy_of(injected)
    assert "readinessProbe" not in proxy and "startupProbe" not in proxy
    assert injected["spec"]["containers"][0]["readinessProbe"] == http_app["readinessProbe"]
    assert flag(init_args(injected), "-d") == "15090,15021"


def test_user_volume_and_mount_are_added_to_the_pod_and_the_proxy() -> None:
    annotations = {
        "sidecar.istio.io/userVolume": '{"certs":{"secret":{"secretName":"app-certs"}}}',
        "sidecar.istio.io/userVolumeMount": '{"certs":{"mountPath":"/etc/certs","readOnly":true}}',
    }
    injected = inject(pod(annotations=annotations))
    assert {"name": "certs", "secret": {"secretName": "app-certs"}} in injected["spec"]["volumes"]
    assert {"name": "certs", "mountPath": "/etc/certs", "readOnly": True} in proxy_of(injected)["volumeMounts"]


def test_bad_user_volume_mount_is_refused_naming_the_annotation() -> None:
    with pytest.raises(InjectionError, match=r"sidecar.istio.io/userVolumeMount.*mountPath is required"):
        inject(pod(annotations={"sidecar.istio.io/userVolumeMount": '{"certs":{"readOnly":true}}'}))


def test_reroute_virtual_interfaces_wins_over_kubevirt_interfaces_as_istio_init_k() -> None:
    kubevirt = inject(pod(annotations={"traffic.sidecar.istio.io/kubevirtInterfaces": "net1"}))
    assert flag(init_args(kubevirt), "-k") == "net1"
    both = {"traffic.sidecar.istio.io/kubevirtInterfaces": "net1", "istio.io/reroute-virtual-interfaces": "net2"}
    assert flag(init_args(inject(pod(annotations=both))), "-k") == "net2"
    with pytest.raises(InjectionError, match=r"istio\.io/reroute-virtual-interfaces"):
        inject(pod(annotations={"istio.io/reroute-virtual-interfaces": "net 1"}))


def test_a_pod_whose_only_container_is_istio_proxy_is_injected_as_a_gateway() -> None:
    gateway = pod(containers=[{"name": "istio-proxy", "image": "auto"}])
    injected = inject(gateway)
    assert [c["name"] for c in injected["spec"].get("containers", []) + injected["spec"]["initContainers"]].count(
        "istio-proxy"
    ) == 1


def test_istio_init_excludes_the_proxy_effective_run_as_user_and_group() -> None:
    custom = {"name": "istio-proxy", "image": "auto", "securityContext": {"runAsUser": 2000, "runAsGroup": 3000}}
    injected = inject(pod(containers=[{"name": "app", "image": "a"}, custom]))
    args = init_args(injected)
    assert (flag(args, "-u"), flag(args, "-g")) == ("2000", "3000")
    assert proxy_of(injected)["securityContext"]["runAsUser"] == 2000
    default = init_args(inject(pod()))
    assert (flag(default, "-u"), flag(default, "-g")) == ("1337", None)  # -g defaults to -u, as in Istio


def test_canonical_name_label_is_truncated_to_63_characters_as_istio_does() -> None:
    long_name = "a" * 62 + "-b" + "c" * 30
    injected = inject(pod(labels={"app": long_name}))
    assert injected["metadata"]["labels"]["service.istio.io/canonical-name"] == "a" * 62


@pytest.mark.parametrize(
    ("annotation", "value", "flag_name"),
    [
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "*", "-x"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "0", "-d"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "80,*", "-b"),
    ],
)
def test_values_istio_iptables_would_refuse_are_refused_at_injection(
    annotation: str, value: str, flag_name: str
) -> None:
    with pytest.raises(InjectionError) as caught:
        inject(pod(annotations={annotation: value}))
    assert caught.value.annotation == annotation
    assert annotation in str(caught.value)


def test_native_istio_proxy_gets_istio_prestop_drain_hook() -> None:
    proxy = proxy_of(inject(pod()))
    assert proxy["restartPolicy"] == "Always"
    command = proxy["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["pilot-agent", "request", "--debug-port=15020", "POST", "drain"]


def test_classic_istio_proxy_gets_istio_startup_probe() -> None:
    injected = inject(pod(), params(CLASSIC))
    proxy = next(c for c in injected["spec"]["containers"] if c["name"] == "istio-proxy")
    assert proxy["startupProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert proxy["startupProbe"]["failureThreshold"] == 600
    assert "lifecycle" not in proxy


def test_user_native_sidecar_has_its_probes_rewritten_like_an_app_container() -> None:
    log_agent = {
        "name": "logs",
        "image": "logs:1",
        "restartPolicy": "Always",
        "ports": [{"name": "health", "containerPort": 9000}],
        "livenessProbe": {"httpGet": {"path": "/live", "port": "health"}},
    }
    injected = inject(pod(initContainers=[log_agent]))
    logs = next(c for c in injected["spec"]["initContainers"] if c["name"] == "logs")
    assert logs["livenessProbe"]["httpGet"] == {"path": "/app-health/logs/livez", "port": 15020}
    assert probers(injected)["/app-health/logs/livez"] == {"httpGet": {"path": "/live", "port": 9000}}


def test_application_lifecycle_hooks_go_through_the_agent() -> None:
    app = {
        "name": "app",
        "image": "a",
        "ports": [{"name": "http", "containerPort": 8080}],
        "lifecycle": {
            "preStop": {"httpGet": {"path": "/quit", "port": "http", "scheme": "HTTPS"}},
            "postStart": {"tcpSocket": {"port": 8080}},
        },
    }
    injected = inject(pod(containers=[app]))
    hooks = injected["spec"]["containers"][0]["lifecycle"]
    assert hooks["preStop"] == {"httpGet": {"path": "/app-lifecycle/app/prestopz", "port": 15020, "scheme": "HTTP"}}
    assert hooks["postStart"] == {"httpGet": {"path": "/app-lifecycle/app/poststartz", "port": 15020}}
    saved = probers(injected)
    assert saved["/app-lifecycle/app/prestopz"] == {"httpGet": {"path": "/quit", "port": 8080, "scheme": "HTTPS"}}
    assert saved["/app-lifecycle/app/poststartz"] == {"tcpSocket": {"port": 8080}}
    assert inject(injected) == injected  # and re-injection restores then redoes them


def test_exec_lifecycle_hooks_stay_as_they_are() -> None:
    app = {"name": "app", "image": "a", "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}}}
    injected = inject(pod(containers=[app]))
    assert injected["spec"]["containers"][0]["lifecycle"] == app["lifecycle"]


def test_grpc_agent_follows_istio() -> None:
    grpc_app = {"name": "app", "image": "a", "readinessProbe": {"grpc": {"port": 9000}}}
    injected = inject(pod(annotations={"inject.istio.io/templates": "grpc-agent"}, containers=[grpc_app]))
    proxy = proxy_of(injected)
    assert env(proxy)["DISABLE_ENVOY"] == "true"
    assert "security.istio.io/tlsMode" not in injected["metadata"]["labels"]
    assert injected["spec"]["containers"][0]["readinessProbe"] == grpc_app["readinessProbe"]
    assert "ISTIO_KUBE_APP_PROBERS" not in env(proxy)
    mounts = {m["name"]: m["mountPath"] for m in injected["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["workload-certs"] == "/var/run/secrets/workload-spiffe-credentials"


def test_dotted_prometheus_scrape_false_is_an_opt_out() -> None:
    injected = inject(pod(annotations={"prometheus.io.scrape": "false"}))
    assert "prometheus.io/port" not in injected["metadata"]["annotations"]
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" not in env(proxy_of(injected))


def test_prometheus_annotations_in_another_spelling_are_saved_and_replaced() -> None:
    # Prometheus reads `prometheus.io.port` and `prometheus-io/path` as `prometheus.io/port` and `/path`:
    # left beside ours, it would see two ports for the pod and take either; Istio clears every spelling.
    original = pod(
        annotations={"prometheus.io.port": "9102", "prometheus-io/path": "/m", "prometheus.io.scrape": "true"}
    )
    injected = inject(original)
    annotations = injected["metadata"]["annotations"]
    assert {k: v for k, v in annotations.items() if "prometheus" in k} == {
        "prometheus.io/port": "15020",
        "prometheus.io/path": "/stats/prometheus",
        "prometheus.io/scrape": "true",
    }
    saved = json.loads(env(proxy_of(injected))["ISTIO_PROMETHEUS_ANNOTATIONS"])
    assert saved == {"scrape": "true", "path": "/m", "port": "9102"}
    assert inject(injected) == injected


def test_the_canonical_prometheus_spelling_wins_over_the_others() -> None:
    original = pod(annotations={"prometheus.io.port": "9102", "prometheus.io/port": "9090", "prometheus_io_port": "1"})
    saved = json.loads(env(proxy_of(inject(original)))["ISTIO_PROMETHEUS_ANNOTATIONS"])
    assert saved["port"] == "9090"
    without_canonical = pod(annotations={"prometheus_io_port": "1", "prometheus.io.port": "9102"})
    assert json.loads(env(proxy_of(inject(without_canonical)))["ISTIO_PROMETHEUS_ANNOTATIONS"])["port"] == "9102"


def test_a_sidecar_port_in_another_spelling_is_left_alone() -> None:
    injected = inject(pod(annotations={"prometheus.io.port": "15090"}))
    assert injected["metadata"]["annotations"]["prometheus.io.port"] == "15090"
    assert "prometheus.io/port" not in injected["metadata"]["annotations"]


def test_prometheus_annotations_env_is_set_only_when_the_pod_has_prometheus_annotations() -> None:
    plain = inject(pod())
    assert plain["metadata"]["annotations"]["prometheus.io/port"] == "15020"
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" not in env(proxy_of(plain))
    scraped = inject(pod(annotations={"prometheus.io/port": "9090", "prometheus.io/path": "/m"}))
    saved = json.loads(env(proxy_of(scraped))["ISTIO_PROMETHEUS_ANNOTATIONS"])
    assert saved == {"scrape": "", "path": "/m", "port": "9090"}


SCRAPE_TARGETS = "prometheus.istio.io/scrape-targets"


def test_scrape_targets_reach_the_agent_in_istios_env_shape_and_leave_the_pod() -> None:
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9999",  # the targets win; the first stands in for port and path
        "prometheus.io/path": "/legacy",
        SCRAPE_TARGETS: " 8080:/metrics , 9100:/custom-metrics,",
    }
    injected = inject(pod(annotations=annotations))
    # byte for byte what Istio's injector writes for these targets (its hello-multiport-metrics golden)
    assert env(proxy_of(injected))["ISTIO_PROMETHEUS_ANNOTATIONS"] == (
        '{"scrape":"true","path":"/metrics","port":"8080",'
        '"targets":[{"port":"8080","path":"/metrics"},{"port":"9100","path":"/custom-metrics"}]}'
    )
    merged = injected["metadata"]["annotations"]
    assert SCRAPE_TARGETS not in merged
    assert (merged["prometheus.io/port"], merged["prometheus.io/path"]) == ("15020", "/stats/prometheus")


def test_scrape_targets_stay_on_the_pod_when_metrics_are_not_merged() -> None:
    annotations = {"prometheus.istio.io/merge-metrics": "false", SCRAPE_TARGETS: "8080:/metrics"}
    injected = inject(pod(annotations=annotations))
    assert injected["metadata"]["annotations"][SCRAPE_TARGETS] == "8080:/metrics"
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" not in env(proxy_of(injected))


def test_scrape_targets_come_back_when_reinjection_turns_the_merge_off() -> None:
    once = inject(pod(annotations={SCRAPE_TARGETS: "8080:/metrics,9100:/m"}))
    once["metadata"]["annotations"]["prometheus.istio.io/merge-metrics"] = "false"
    redone = inject(once)
    assert redone["metadata"]["annotations"][SCRAPE_TARGETS] == "8080:/metrics,9100:/m"
    assert "ISTIO_PROMETHEUS_ANNOTATIONS" not in env(proxy_of(redone))


@pytest.mark.parametrize(
    ("value", "item", "problem"),
    [
        ("8080:/metrics,15000:/stats", "15000:/stats", "port 15000 is the sidecar's own (Envoy admin)"),
        ("15020:/metrics", "15020:/metrics", "port 15020 is the sidecar's own (agent status)"),
        ("9100:/m,15009:/m", "15009:/m", "port 15009 is the sidecar's own"),
        ("8080:/metrics,15090", "15090", "(Envoy Prometheus)"),
        ("http:/metrics", "http:/metrics", "port 'http' is not a port number 1-65535"),
        ("8080:/m,0:/m", "0:/m", "port '0' is not a port number"),
        ("65536:/m", "65536:/m", "port '65536' is not a port number"),
        ("8080:metrics", "8080:metrics", "the path must begin with /"),
        ("8080:/a b", "8080:/a b", "whitespace"),
        ("8080:/metrics,9100:/m,8080:/metrics", "8080:/metrics", "listed twice"),
        (" , ", None, "lists no target"),
    ],
)
def test_bad_scrape_targets_are_refused_naming_the_annotation_and_the_item(
    value: str, item: str | None, problem: str
) -> None:
    with pytest.raises(InjectionError) as caught:
        inject(pod(annotations={SCRAPE_TARGETS: value}))
    assert caught.value.annotation == SCRAPE_TARGETS
    assert SCRAPE_TARGETS in str(caught.value)
    assert problem in caught.value.problem
    if item is not None:
        assert caught.value.problem.startswith(f"{item!r}:")


def test_a_scrape_target_on_the_pods_own_status_port_is_refused() -> None:
    own_port = {"status.sidecar.istio.io/port": "15099", SCRAPE_TARGETS: "8080:/metrics,15099:/metrics"}
    with pytest.raises(InjectionError, match=r"'15099:/metrics': port 15099 is the sidecar's own \(agent status\)"):
        inject(pod(annotations=own_port))


@pytest.mark.parametrize(
    "annotations",
    [
        {},
        {"prometheus.io/port": "9090", "prometheus.io/scrape": "true"},
        {"prometheus.io/path": "/m"},
        {"prometheus.io/port": "9090", SCRAPE_TARGETS: "8080:/metrics, 9100:/custom", "prometheus.io/scrape": "true"},
        {SCRAPE_TARGETS: "8080"},
    ],
)
def test_injecting_an_injected_pod_gives_the_same_pod(annotations: dict[str, str]) -> None:
    once = inject(pod(annotations=annotations))
    twice = inject(copy.deepcopy(once))
    assert json.dumps(twice) == json.dumps(once)
