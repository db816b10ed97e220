"""The injection config: defaults, the two ConfigMaps, precise errors, and live reloading."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from controlplane.aio import HeavyWork
from controlplane.model.store import ConfigStore, ObjectKey
from tests.helpers.tasks import running
from webhook.config import ConfigError, InjectionConfig
from webhook.configparse import parse_injection_config
from webhook.configwatch import InjectionConfigWatcher

NS = "istio-system"
INJECTOR = "istio-sidecar-injector-canary"
MESH = "istio-canary"


def test_defaults_are_istios_stock_sidecar() -> None:
    config = parse_injection_config(injector=None, mesh=None)
    assert config == InjectionConfig()
    assert config.policy == "enabled"
    assert config.proxy_image == "docker.io/istio/proxyv2:1.28.0"
    assert config.proxy_init_image == "docker.io/istio/proxyv2:1.28.0"
    assert config.resources.to_dict() == {
        "limits": {"cpu": "2000m", "memory": "1024Mi"},
        "requests": {"cpu": "100m", "memory": "128Mi"},
    }
    assert config.native_sidecar and config.rewrite_app_probes
    assert config.interception_mode == "REDIRECT"
    assert config.default_templates == ("sidecar",)


def test_istio_shaped_configmaps_are_read() -> None:
    config = parse_injection_config(
        injector={
            "config": """
policy: disabled
defaultTemplates: [sidecar]
injectedAnnotations:
  example.com/owner: mesh-team
neverInjectSelector:
- matchExpressions:
  - key: openshift.io/build.name
    operator: Exists
alwaysInjectSelector:
- matchLabels: {mesh: always}
""",
            "values": """{
  "global": {
    "hub": "registry.example.com/istio",
    "tag": "1.28.1",
    "imagePullPolicy": "IfNotPresent",
    "imagePullSecrets": ["regcred"],
    "meshID": "prod",
    "network": "net-1",
    "proxy": {
      "image": "proxyv2",
      "resources": {"requests": {"cpu": "50m", "memory": 64}, "limits": {"cpu": 1, "memory": "256Mi"}},
      "includeIPRanges": "10.0.0.0/8",
      "excludeIPRanges": "10.96.0.1/32",
      "includeInboundPorts": "*",
      "excludeInboundPorts": "9100",
      "excludeOutboundPorts": "25",
      "logLevel": "info",
      "componentLogLevel": "misc:warning",
      "interceptionMode": "NONE"
    },
    "proxy_init": {"image": "registry.example.com/other/init:9"}
  },
  "sidecarInjectorWebhook": {"nativeSidecar": false, "rewriteAppHTTPProbe": false}
}""",
        },
        mesh={"mesh": "trustDomain: example.org\nenablePrometheusMerge: false\ndefaultConfig:\n  concurrency: 2\n"},
    )
    assert config.policy == "disabled"
    assert dict(config.injected_annotations) == {"example.com/owner": "mesh-team"}
    assert config.never_inject_selector[0].matches({"openshift.io/build.name": "x"})
    assert config.always_inject_selector[0].matches({"mesh": "always"})
    assert config.proxy_image == "registry.example.com/istio/proxyv2:1.28.1"
    assert config.proxy_init_image == "registry.example.com/other/init:9"
    assert config.image_pull_policy == "IfNotPresent"
    assert config.image_pull_secrets == ("regcred",)
    assert (config.mesh_id, config.network, config.trust_domain) == ("prod", "net-1", "example.org")
    assert config.resources.to_dict() == {
        "limits": {"cpu": "1", "memory": "256Mi"},
        "requests": {"cpu": "50m", "memory": "64"},
    }
    assert (config.include_outbound_ip_ranges, config.exclude_outbound_ip_ranges) == ("10.0.0.0/8", "10.96.0.1/32")
    assert (config.include_inbound_ports, config.exclude_inbound_ports, config.exclude_outbound_ports) == (
        "*",
        "9100",
        "25",
    )
    assert (config.proxy_log_level, config.proxy_component_log_level) == ("info", "misc:warning")
    assert config.interception_mode == "NONE"
    assert not config.native_sidecar and not config.rewrite_app_probes and not config.enable_prometheus_merge
    assert dict(config.proxy_config) == {"concurrency": 2}


def test_mesh_fields_for_other_components_are_accepted() -> None:
    mesh = "rootNamespace: istio-system\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\ndiscoverySelectors: []\n"
    assert (
        parse_injection_config(injector=None, mesh={"mesh": mesh, "meshNetworks": "networks: {}"}) == InjectionConfig()
    )


@pytest.mark.parametrize(
    ("injector", "mesh", "key", "field", "problem"),
    [
        ({"config": "policy: maybe"}, None, "config", "policy", "'maybe' is not one of enabled, disabled"),
        ({"config": "polcy: enabled"}, None, "config", "polcy", "did you mean 'policy'?"),
        ({"config": "templates: {bad: '{% if %}'}"}, None, "config", "templates.bad", "syntax error"),
        ({"config": "templates: [sidecar]"}, None, "config", "templates", "must be an object, got list"),
        ({"config": "defaultTemplates: [spire]"}, None, "config", "defaultTemplates", "unknown template 'spire'"),
        ({"config": "defaultTemplates: []"}, None, "config", "defaultTemplates", "at least one template"),
        ({"config": "neverInjectSelector: [{}]"}, None, "config", "neverInjectSelector[0]", "empty selector"),
        (
            {"config": "neverInjectSelector: [{matchExpressions: [{key: a, operator: In}]}]"},
            None,
            "config",
            "neverInjectSelector[0].matchExpressions[0].values",
            "needs at least one value",
        ),
        (
            {"config": "alwaysInjectSelector: [{matchExpressions: [{key: a, operator: Matches}]}]"},
            None,
            "config",
            "alwaysInjectSelector[0].matchExpressions[0].operator",
            "not one of In, NotIn",
        ),
        ({"config": "policy: [enabled"}, None, "config", "", "not valid YAML/JSON at line 1"),
        ({"values": "global: {tag: 1.28}"}, None, "values", "global.tag", "must be a string, got number (quote it)"),
        ({"values": "global: {proxy: {image: 'a b'}}"}, None, "values", "global.proxy.image", "not a container image"),
        (
            {"values": "global: {proxy: {resources: {requests: {cpu: 2}, limits: {cpu: 1}}}}"},
            None,
            "values",
            "global.proxy.resources.requests.cpu",
            "request 2 exceeds limit 1",
        ),
        (
            {"values": "global: {proxy: {resources: {requests: {cpu: lots}}}}"},
            None,
            "values",
            "global.proxy.resources.requests.cpu",
            "not a Kubernetes quantity",
        ),
        (
            {"values": "global: {proxy: {includeIPRanges: 10/8}}"},
            None,
            "values",
            "global.proxy.includeIPRanges",
            "not a CIDR",
        ),
        (
            {"values": "global: {proxy: {excludeInboundPorts: '*'}}"},
            None,
            "values",
            "global.proxy.excludeInboundPorts",
            "not allowed",
        ),
        ({"values": "global: {proxy: {privileged: true}}"}, None, "values", "global.proxy.privileged", "unknown field"),
        (
            {"values": "pilot: {enabled: true}"},
            None,
            "values",
            "pilot",
            "supported here: global, sidecarInjectorWebhook",
        ),
        (
            {"values": "global: {imagePullPolicy: Sometimes}"},
            None,
            "values",
            "global.imagePullPolicy",
            "not one of Always",
        ),
        (
            {"values": "sidecarInjectorWebhook: {nativeSidecar: 'yes'}"},
            None,
            "values",
            "sidecarInjectorWebhook.nativeSidecar",
            "must be true or false",
        ),
        (
            {"values": "global: {proxy: {interceptionMode: TPROXY}}"},
            None,
            "values",
            "global.proxy.interceptionMode",
            "TPROXY is not supported",
        ),
        (
            None,
            {"mesh": "defaultConfig: {interceptionMode: TPROXY}"},
            "mesh",
            "defaultConfig",
            "interceptionMode: TPROXY is not supported",
        ),
        ({"template": "x"}, None, "template", "", "unknown key in the injector ConfigMap"),
        (None, {"mesh": "trustDomian: x"}, "mesh", "trustDomian", "did you mean 'trustDomain'?"),
        (
            None,
            {"mesh": "defaultConfig: {concurrency: two}"},
            "mesh",
            "defaultConfig",
            "concurrency: must be an integer",
        ),
        (
            None,
            {"mesh": "defaultConfig: {holdApplicationUntilProxyStart: true}"},
            "mesh",
            "defaultConfig",
            "did you mean",
        ),
        (None, {"mesh": "enablePrometheusMerge: sometimes"}, "mesh", "enablePrometheusMerge", "must be true or false"),
        (None, {"mesh": "- a list"}, "mesh", "", "must be an object, got list"),
        (None, {"mesh": "meshMTLS: {}\n" + "# padding\n" * 7_000}, "mesh", "", "at most 65,536 are read"),
        ({"values": "global: {}\n" + "# padding\n" * 30_000}, None, "values", "", "at most 262,144 are read"),
    ],
)
def test_invalid_content_names_key_and_field(
    injector: dict[str, str] | None, mesh: dict[str, str] | None, key: str, field: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_injection_config(injector=injector, mesh=mesh)
    assert caught.value.key == key
    assert caught.value.field == field
    assert problem in str(caught.value)
    assert str(caught.value).startswith(f"key {key!r}")


# -- the watcher ---------------------------------------------------------------------------------


def configmap(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS}, "data": data}


def put(store: ConfigStore, obj: dict[str, Any] | None, name: str) -> None:
    store.apply([(ObjectKey("ConfigMap", NS, name), obj)])


def watcher(store: ConfigStore) -> InjectionConfigWatcher:
    return InjectionConfigWatcher(store, namespace=NS, injector_configmap=INJECTOR, mesh_configmap=MESH)


@contextlib.asynccontextmanager
async def following(w: InjectionConfigWatcher) -> AsyncIterator[InjectionConfigWatcher]:
    """`w` with its `run()` going (it parses changes); cancelled on exit."""
    async with running(w.run()):
        yield w


async def test_watcher_reads_what_is_already_in_the_store_and_follows_changes() -> None:
    store = ConfigStore()
    put(store, configmap(INJECTOR, {"values": "global: {tag: '1.29.0'}"}), INJECTOR)
    async with following(watcher(store)) as w:
        assert w.current.proxy_image == "docker.io/istio/proxyv2:1.29.0"
        put(store, configmap(MESH, {"mesh": "trustDomain: example.org"}), MESH)
        await w.settled()
        assert w.current.trust_domain == "example.org"
        assert w.current.proxy_image == "docker.io/istio/proxyv2:1.29.0"
        put(store, None, INJECTOR)
        await w.settled()
        assert w.current.proxy_image == "docker.io/istio/proxyv2:1.28.0"
        description = w.describe()
    assert description["injectorConfigMap"] == {"name": f"{NS}/{INJECTOR}", "used": False}
    assert description["meshConfigMap"] == {"name": f"{NS}/{MESH}", "used": True}
    assert description["lastError"] is None
    assert description["config"]["trustDomain"] == "example.org"


async def test_watcher_ignores_other_configmaps_and_namespaces() -> None:
    store = ConfigStore()
    async with following(watcher(store)) as w:
        put(store, configmap("istio-sidecar-injector", {"values": "global: {tag: other}"}), "istio-sidecar-injector")
        other_ns = configmap(INJECTOR, {"values": "global: {tag: other}"})
        other_ns["metadata"]["namespace"] = "default"
        store.apply([(ObjectKey("ConfigMap", "default", INJECTOR), other_ns)])
        await w.settled()
    assert w.current == InjectionConfig()
    assert w.reloads == 1


async def test_an_invalid_new_version_keeps_the_last_good_config_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    store = ConfigStore()
    put(store, configmap(INJECTOR, {"config": "policy: disabled"}), INJECTOR)
    async with following(watcher(store)) as w:
        assert w.current.policy == "disabled"
        with caplog.at_level(logging.ERROR, logger="webhook.configwatch"):
            put(store, configmap(INJECTOR, {"config": "policy: paused"}), INJECTOR)
            await w.settled()
        assert w.current.policy == "disabled"
        error = w.describe()["lastError"]
        assert (
            error == f"ConfigMap {NS}/{INJECTOR}: key 'config', field policy: 'paused' is not one of enabled, disabled"
        )
        assert error in caplog.text
        put(store, configmap(INJECTOR, {"config": "policy: enabled"}), INJECTOR)
        await w.settled()
        assert w.current.policy == "enabled"
        assert w.describe()["lastError"] is None


class HeldParse:
    """Stands in for `parse_injection_config`: records the thread of each call and, while `held`,
    waits (in that thread) until the test lets it go."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.pauses: list[tuple[bool, float]] = []  # each call's collector state and switch interval
        self.parsed: list[str | None] = []  # each call's injector `values`
        self.started = threading.Event()
        self.go = threading.Event()
        self.held = False

    def hold(self) -> None:
        """Parses from now on wait for `go`; `started` is set when the next begins."""
        self.held, self.started = True, threading.Event()

    def __call__(self, *, injector: Mapping[str, str] | None, mesh: Mapping[str, str] | None) -> InjectionConfig:
        self.threads.append(threading.get_ident())
        self.pauses.append((gc.isenabled(), sys.getswitchinterval()))
        self.parsed.append(injector.get("values") if injector is not None else None)
        self.started.set()
        if self.held and not self.go.wait(timeout=10):
            raise AssertionError("the test never let the parse go: was it run on the event loop?")
        return parse_injection_config(injector=injector, mesh=mesh)


def held_parse(monkeypatch: pytest.MonkeyPatch) -> HeldParse:
    held = HeldParse()
    monkeypatch.setattr("webhook.configwatch.parse_injection_config", held)
    return held


def tag(version: str) -> dict[str, Any]:
    return configmap(INJECTOR, {"values": f"global: {{tag: '{version}'}}"})


async def test_a_change_is_parsed_in_a_worker_thread_while_the_event_loop_runs_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parsing a config validates its templates by injecting a sample pod: tens of milliseconds for a
    large one, which on the event loop would hold every review, signing request and xDS push."""
    store = ConfigStore()
    held = held_parse(monkeypatch)
    async with following(watcher(store)) as w:
        held.hold()
        put(store, tag("1.29.1"), INJECTOR)
        assert await asyncio.to_thread(held.started.wait, 10)  # the loop turns while the parse waits
        assert w.current.proxy_image.endswith(":1.28.0")  # not current before the parse ends
        held.go.set()
        await w.settled()
    assert held.threads[0] == threading.get_ident()  # the first, at start-up, where the watcher is made
    assert held.threads[1] != threading.get_ident()
    assert w.current.proxy_image == "docker.io/istio/proxyv2:1.29.1"
    # in the thread, most of what parsing builds dies with it: no collection walking the registry
    # meanwhile, and the GIL back to the event loop within 0.5 ms instead of 5
    assert held.pauses[1] == (False, HeavyWork.SWITCH_INTERVAL)
    assert gc.isenabled() and sys.getswitchinterval() == held.pauses[0][1]


async def test_changes_during_a_parse_are_parsed_together_after_it_and_the_newest_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = ConfigStore()
    held = held_parse(monkeypatch)
    async with following(watcher(store)) as w:
        held.hold()
        put(store, tag("1.29.1"), INJECTOR)
        assert await asyncio.to_thread(held.started.wait, 10)
        put(store, tag("1.29.2"), INJECTOR)
        put(store, tag("1.29.3"), INJECTOR)
        settled = asyncio.create_task(w.settled())
        await asyncio.sleep(0.01)
        assert not settled.done()  # two versions are still to be parsed
        held.go.set()
        await settled
    assert held.parsed == [None, "global: {tag: '1.29.1'}", "global: {tag: '1.29.3'}"]
    assert w.current.proxy_image == "docker.io/istio/proxyv2:1.29.3" and w.reloads == 3


async def test_a_parser_defect_keeps_the_last_good_config_and_the_watcher_running(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = ConfigStore()
    async with following(watcher(store)) as w:

        def broken(**_: Any) -> InjectionConfig:
            raise RecursionError("maximum recursion depth exceeded")

        with monkeypatch.context() as patched, caplog.at_level(logging.ERROR, logger="webhook.configwatch"):
            patched.setattr("webhook.configwatch.parse_injection_config", broken)
            put(store, tag("1.29.1"), INJECTOR)
            await w.settled()
        assert w.current == InjectionConfig()
        assert "parsing failed (RecursionError: maximum recursion depth exceeded)" in str(w.last_error)
        assert "Traceback" in caplog.text
        put(store, tag("1.29.2"), INJECTOR)
        await w.settled()
    assert w.current.proxy_image == "docker.io/istio/proxyv2:1.29.2" and w.last_error is None


def test_an_invalid_mesh_configmap_is_blamed_on_the_mesh_configmap() -> None:
    store = ConfigStore()
    put(store, configmap(MESH, {"mesh": "defaultConfig: []"}), MESH)
    w = watcher(store)
    assert w.current == InjectionConfig()
    assert str(w.describe()["lastError"]).startswith(f"ConfigMap {NS}/{MESH}: key 'mesh', field defaultConfig:")
