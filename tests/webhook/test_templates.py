"""Injection templates as data: loading a ConfigMap's templates, refusing bad ones, the sandbox.

Over the wire: a running `meshplane serve` (local mode) picks up a new template from the injector
ConfigMap in its config dir, and keeps the last good templates (logging why) when an edit brings one
that would inject an invalid pod. The goldens (`template-*.yaml`) cover what each template injects.
"""

from __future__ import annotations

import copy
import logging
import sys
import threading
from typing import Any

import jinja2
import pytest

from controlplane.model.store import ConfigStore, ObjectKey
from tests.helpers.serve import Running, admission_review, apply_response, post_webhook
from tests.helpers.tasks import running
from tests.webhook.test_live_config import wait_for, write
from webhook import sandbox, templates
from webhook.config import ConfigError
from webhook.configparse import parse_injection_config
from webhook.configwatch import InjectionConfigWatcher
from webhook.inject import InjectionParams, TemplateError, inject_pod

TEAM = "metadata:\n  labels:\n    team: {{ pod.metadata.labels.get('team', 'none') | tojson }}\n"


def injector(templates: dict[str, str], defaults: list[str] | None = None) -> dict[str, str]:
    lines = ["templates:"]
    for name, source in templates.items():
        lines.append(f"  {name}: |")
        lines += [f"    {line}" for line in source.splitlines()]
    if defaults is not None:
        lines.append(f"defaultTemplates: {defaults}")
    return {"config": "\n".join(lines) + "\n"}


def pod(**annotations: str) -> dict[str, Any]:
    meta = {"name": "web", "namespace": "shop", "labels": {"app": "web", "team": "a<b"}, "annotations": annotations}
    return {"metadata": meta, "spec": {"containers": [{"name": "web", "image": "example.com/web:1"}]}}


def params(config: Any) -> InjectionParams:
    return InjectionParams(
        revision="default",
        namespace="shop",
        config=config,
        discovery_address="istiod.istio-system.svc:15012",
        trust_domain="cluster.local",
        cluster_id="Kubernetes",
    )


@pytest.mark.parametrize(
    ("source", "field", "problem"),
    [
        ("spec:\n  volumes:\n  {% for v in x %}\n", "templates.bad", "line 3: syntax error"),
        ("a: {{ nope.value }}\n", "templates.bad", "uses nope, which is not defined"),
        ("spec:\n  containers: {{ pod.__class__.__mro__ | tojson }}\n", "templates.bad", "unsafe"),
        ("spec:\n  containers:\n  - name: extra\n", "templates.bad", "container 'extra' has no image"),
        (
            "spec:\n  containers:\n  - name: istio-proxy\n    volumeMounts:\n    - {name: spire, mountPath: /spire}\n",
            "templates.bad",
            "mounts volume 'spire', which the pod lacks",
        ),
        ("metadata:\n  labels:\n    port: 15020\n", "templates.bad", "metadata.labels.port: must be a string"),
        ("kind: Pod\n", "templates.bad", "kind: is not part of a pod template"),
        (
            "spec:\n  containers:\n  - name: istio-proxy\n    env:\n    - {name: SECRET_TTL, value: 3600}\n",
            "templates.bad",
            "spec.containers[0].env[0].value: must be a string, got integer (quote it)",
        ),
        (
            "spec:\n  containers:\n  - name: istio-proxy\n    args: [proxy, --concurrency, 2]\n",
            "templates.bad",
            "spec.containers[0].args[2]: must be a string, got integer",
        ),
        # what one rendering may make and run: 3 GB of string, a 300-million-bit integer, hours of loops
        (
            "metadata:\n  labels:\n    a: \"{{ 'x' * 3000000000 }}\"\n",
            "templates.bad",
            "'*' would make 3,000,000,000 characters or items; a rendering may make at most 8,000,000",
        ),
        ('metadata:\n  labels:\n    a: "{{ 10 ** 100000000 }}"\n', "templates.bad", "'**' would make an integer"),
        (
            "metadata:\n  labels:\n    a: \"{% for i in range(3) %}{{ 'y' * 1000000 }}{% endfor %}\"\n",
            "templates.bad",
            "renders 3,000,029 characters; a rendering may write at most 1,048,576",
        ),
        (
            'metadata:\n  labels:\n    a: "{% for i in range(100000) %}{% for j in range(100000) %}'
            '{% endfor %}{% endfor %}"\n',
            "templates.bad",
            "line 3: rendering took longer than 0.2s (does a loop run too long?)",
        ),
    ],
    ids=[
        "syntax",
        "unknown-name",
        "sandbox",
        "no-image",
        "dangling-mount",
        "label-not-string",
        "not-a-fragment",
        "env-not-string",
        "arg-not-string",
        "repeat-string",
        "power",
        "rendered-size",
        "loops-in-loops",
    ],
)
def test_a_template_that_cannot_inject_is_refused_when_the_configmap_is_read(
    source: str, field: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "RENDER_BUDGET_S", 0.2)
    with pytest.raises(ConfigError) as caught:
        parse_injection_config(injector=injector({"bad": source}), mesh=None)
    assert caught.value.key == "config"
    assert caught.value.field == field
    assert problem in str(caught.value)


def test_a_user_template_merges_after_the_defaults_and_pod_values_stay_data() -> None:
    config = parse_injection_config(injector=injector({"team": TEAM}, ["sidecar", "team"]), mesh=None)
    injected = inject_pod(pod(), params(config))
    assert injected["metadata"]["labels"]["team"] == "a<b"  # written as JSON: no escaping, no YAML structure
    assert any(c["name"] == "istio-proxy" for c in injected["spec"]["initContainers"])


def test_a_builtin_can_be_replaced_by_name() -> None:
    config = parse_injection_config(injector=injector({"gateway": TEAM}), mesh=None)
    injected = inject_pod(pod(**{"inject.istio.io/templates": "sidecar,gateway"}), params(config))
    assert injected["metadata"]["labels"]["team"] == "a<b"


def test_a_template_failing_for_one_pod_rejects_it_naming_template_and_line() -> None:
    source = "metadata:\n  annotations:\n    owner: {{ pod.metadata.annotations['owner'] | tojson }}\n"
    # the sample pod has no 'owner' annotation either, so give the template a guard the sample takes
    guarded = "{% if 'team' in pod.metadata.labels %}\n" + source + "{% endif %}\n"
    config = parse_injection_config(injector=injector({"owner": guarded}), mesh=None)
    with pytest.raises(TemplateError) as caught:
        inject_pod(pod(**{"inject.istio.io/templates": "sidecar,owner"}), params(config))
    assert str(caught.value) == "template 'owner' line 4: 'dict object' has no attribute 'owner'"


def test_a_template_looping_over_a_large_pod_stops_and_refuses_that_pod_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loops in loops over the pod pass the sample's check and ran for hours on a pod with many
    containers, holding a webhook thread past the API server's timeout."""
    monkeypatch.setattr(sandbox, "RENDER_BUDGET_S", 0.2)
    cubed = (
        "metadata:\n  labels:\n    loops: '{% set cs = pod.spec.containers %}{% for a in cs %}{% for b in cs %}"
        "{% for c in cs %}{% endfor %}{% endfor %}{% endfor %}{{ cs | length }}'\n"
    )
    config = parse_injection_config(injector=injector({"cubed": cubed}, ["sidecar", "cubed"]), mesh=None)
    assert inject_pod(pod(), params(config))["metadata"]["labels"]["loops"] == "1"
    large = pod()
    large["spec"]["containers"] = [{"name": f"c{i}", "image": "example.com/c:1"} for i in range(3000)]
    with pytest.raises(TemplateError) as caught:
        inject_pod(copy.deepcopy(large), params(config))
    assert str(caught.value) == "template 'cubed' line 3: rendering took longer than 0.2s (does a loop run too long?)"
    assert inject_pod(pod(), params(config))["metadata"]["labels"]["loops"] == "1"  # the next pod is served
    renders = 0
    render = jinja2.Template.render

    def counted(self: jinja2.Template, *args: Any, **kwargs: Any) -> str:
        nonlocal renders
        renders += 1
        return render(self, *args, **kwargs)

    monkeypatch.setattr(jinja2.Template, "render", counted)
    with pytest.raises(TemplateError) as again:  # a replica of the large pod: refused from the cache
        inject_pod(copy.deepcopy(large), params(config))
    assert (str(again.value), renders) == (str(caught.value), 0)


def test_a_template_that_does_not_read_the_pod_renders_once_per_config() -> None:
    config = parse_injection_config(
        injector=injector({"hub": "metadata:\n  annotations:\n    hub: {{ values.global.hub | tojson }}\n"}), mesh=None
    )
    first = config.templates.render("hub", {**config.template_inputs, "pod": pod()})
    again = config.templates.render("hub", {**config.template_inputs, "pod": pod(other="x")})
    assert first is again
    assert first == {"metadata": {"annotations": {"hub": "docker.io/istio"}}}


async def test_the_watcher_keeps_the_last_good_templates_and_logs_the_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = ConfigStore()
    key = ObjectKey("ConfigMap", "istio-system", "istio-sidecar-injector")
    store.apply([(key, {"data": injector({"team": TEAM}, ["sidecar", "team"])})])
    watcher = InjectionConfigWatcher(
        store, namespace="istio-system", injector_configmap="istio-sidecar-injector", mesh_configmap="istio"
    )
    assert watcher.current.default_templates == ("sidecar", "team")
    bad = "spec:\n  containers:\n  - name: extra\n"
    async with running(watcher.run()):
        with caplog.at_level(logging.ERROR):
            store.apply([(key, {"data": injector({"team": bad}, ["sidecar", "team"])})])
            await watcher.settled()
    assert watcher.current.templates.sources["team"] == TEAM
    assert watcher.last_error is not None and "templates.team" in watcher.last_error
    assert "container 'extra' has no image" in caplog.text


def _team_label(running: Running) -> str | None:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"team": "t1"}}}
    body["spec"] = {"containers": [{"name": "app", "image": "example.com/app:1"}]}
    status, review = post_webhook(running, admission_review(body))
    assert status == 200, review
    return apply_response(body, review["response"])["metadata"]["labels"].get("team-copy")


def test_templates_from_the_configmap_apply_live_and_a_bad_edit_keeps_the_last_good(serve: Running) -> None:
    assert serve.config_dir is not None
    configmap = """
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: istio-sidecar-injector
      namespace: istio-system
    data:
      config: |
        defaultTemplates: [sidecar, copy]
        templates:
          copy: |
            metadata:
              labels:
                team-copy: {{ TEXT }}
    """
    good = "{{ pod.metadata.labels.get('team', 'none') | tojson }}"
    write(serve.config_dir / "injector.yaml", configmap.replace("{{ TEXT }}", good))
    assert wait_for(lambda: _team_label(serve) == "t1")
    write(serve.config_dir / "injector.yaml", configmap.replace("{{ TEXT }}", "{{ pod.metadata.labels.team }"))
    assert wait_for(lambda: "templates.copy" in serve.logs())
    assert "syntax error" in serve.logs()
    assert _team_label(serve) == "t1"


def test_the_render_cache_is_shared_safely_between_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large pods are injected in a worker thread while the event loop injects small ones with the same
    templates, so two threads use one render cache. A key evicted by one thread between the other's
    lookup and its move to the end raised KeyError there: that review failed. Many switches between two
    threads on a cache of one entry hit that window within a few thousand operations."""
    monkeypatch.setattr(templates, "RENDER_CACHE_SIZE", 1)
    cache: templates._Lru[tuple[str, str], dict[str, str]] = templates._Lru()
    errors: list[BaseException] = []

    def use(tag: str) -> None:
        try:
            for i in range(30_000):
                cache.put((tag, str(i % 3)), {})
                cache.get((tag, str((i + 1) % 3)))
                cache.get(("a", "0"))
                cache.get(("b", "0"))
        except BaseException as exc:
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=use, args=(tag,)) for tag in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
