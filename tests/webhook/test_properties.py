"""Property tests: generated pods always get a patch that applies and injection is idempotent;
generated malformed AdmissionReview bodies never get a 5xx from the real HTTPS webhook."""

from __future__ import annotations

import copy
import json
import operator
from collections.abc import Iterator
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.injected import agent_options, iptables_dry_run
from tests.helpers.injector import DEFAULT_PARAMS, default_injector
from tests.helpers.serve import Running, admission_review, post_webhook, start_serve
from webhook.inject import InjectionError, inject_pod
from webhook.options import SUPPORTED_ANNOTATIONS
from webhook.service import Injector

# -- generated pods ----------------------------------------------------------------------------

names = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(lambda n: n != "istio-proxy")
port_numbers = st.integers(min_value=1, max_value=65535).filter(lambda p: p not in {15020, 15021, 15090})


@st.composite
def containers(draw: st.DrawFn, name: str) -> dict[str, Any]:
    ports = draw(st.lists(st.tuples(names, port_numbers), max_size=3, unique_by=(lambda p: p[0], lambda p: p[1])))
    container: dict[str, Any] = {"name": name, "image": draw(st.sampled_from(["app:1", "registry.local/x/y:2.3"]))}
    if ports:
        container["ports"] = [{"name": f"p-{n}"[:15], "containerPort": p} for n, p in ports]
    targets: list[Any] = [p for _, p in ports] + [c["name"] for c in container.get("ports", [])] or [8080]
    for probe_kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        handler = draw(
            st.one_of(
                st.none(),
                st.builds(
                    lambda port, path: {"httpGet": {"path": path, "port": port}},
                    st.sampled_from(targets),
                    st.sampled_from(["/", "/healthz", "/ready?x=1"]),
                ),
                st.builds(lambda port: {"tcpSocket": {"port": port}}, st.sampled_from(targets)),
                st.builds(
                    lambda port: {"grpc": {"port": port}},
                    st.sampled_from([t for t in targets if isinstance(t, int)] or [9000]),
                ),
                st.just({"exec": {"command": ["true"]}}),
            )
        )
        if handler is not None:
            handler.update(
                draw(
                    st.fixed_dictionaries(
                        {}, optional={"periodSeconds": st.integers(1, 30), "timeoutSeconds": st.integers(1, 5)}
                    )
                )
            )
            container[probe_kind] = handler
    if draw(st.booleans()):
        container["env"] = [
            {"name": f"E{i}", "value": v} for i, v in enumerate(draw(st.lists(st.text(max_size=5), max_size=3)))
        ]
    return container


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    container_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    init_names = draw(st.lists(names.filter(lambda n: n not in container_names), max_size=2, unique=True))
    annotations = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "sidecar.istio.io/nativeSidecar": st.sampled_from(["true", "false"]),
                "sidecar.istio.io/interceptionMode": st.sampled_from(["REDIRECT", "NONE"]),
                "sidecar.istio.io/rewriteAppHTTPProbers": st.sampled_from(["true", "false"]),
                "traffic.sidecar.istio.io/excludeOutboundPorts": st.sampled_from(["5432", "5432,6379"]),
                "traffic.sidecar.istio.io/includeOutboundIPRanges": st.sampled_from(["*", "10.0.0.0/8"]),
                "inject.istio.io/templates": st.sampled_from(["sidecar", "grpc-agent"]),
                "prometheus.io/port": st.sampled_from(["9090", "8080"]),
                "prometheus-io/port": st.sampled_from(["9100", "15090"]),  # read as prometheus.io/port
                "prometheus.io.scrape": st.sampled_from(["true", "false"]),
                "sidecar.istio.io/proxyCPU": st.sampled_from(["50m", "1"]),
            },
        )
    )
    if (
        annotations.get("inject.istio.io/templates") == "grpc-agent"
        and "sidecar.istio.io/interceptionMode" in annotations
    ):
        annotations["sidecar.istio.io/interceptionMode"] = "NONE"  # proxyless gRPC intercepts nothing
    labels = draw(st.dictionaries(st.sampled_from(["app", "version", "tier"]), names, max_size=3))
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": draw(names), "labels": labels, "annotations": annotations},
        "spec": {"containers": [draw(containers(n)) for n in container_names]},
    }
    if init_names:
        pod["spec"]["initContainers"] = [{"name": n, "image": "init:1"} for n in init_names]
    if draw(st.booleans()):
        pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    if draw(st.booleans()):
        pod["spec"]["serviceAccountName"] = draw(names)
    return pod


@pytest.fixture(scope="module")
def injector() -> Injector:
    return default_injector()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(pod=pods())
def test_patch_applies_and_injection_is_idempotent(injector: Injector, pod: dict[str, Any]) -> None:
    original = copy.deepcopy(pod)
    first = injector.admit(pod, namespace="shop")
    assert pod == original, "admit() must not modify its input"
    assert first.allowed, first.error
    assert first.patch, "an injectable pod must get a patch"
    injected = jsonpatch.apply_patch(pod, first.patch)
    assert any(
        c["name"] == "istio-proxy" for c in injected["spec"].get("initContainers", []) + injected["spec"]["containers"]
    )
    second = injector.admit(injected, namespace="shop")
    assert second.allowed, second.error
    again = jsonpatch.apply_patch(injected, second.patch or [])
    assert again == injected


# -- malformed bodies over the wire ------------------------------------------------------------


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start_serve(tmp_path_factory.mktemp("props"))
    try:
        yield running
    finally:
        running.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

VALID = json.loads(
    admission_review(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "a", "ports": [{"containerPort": 80}], "readinessProbe": {"httpGet": {"port": 80}}}
                ]
            },
        }
    )
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_reviews(draw: st.DrawFn) -> bytes:
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = draw(json_values)
            break
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = draw(json_values)
    return json.dumps(doc).encode()


bodies = st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()), mutated_reviews())


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(body=bodies)
def test_malformed_bodies_never_get_a_5xx(webhook: Running, body: bytes) -> None:
    status, review = post_webhook(webhook, body)
    assert status < 500, review
    assert isinstance(review, dict) and review.get("kind") == "AdmissionReview", review
    if status != 200:
        assert review["response"]["allowed"] is False and review["response"]["status"]["message"]


# -- deeply nested shapes over the wire --------------------------------------------------------

SHAPES = [("[", "]"), ('{"k":', "}"), ('{"k":[', "]}"), ("- ", ""), ("{", "")]


@st.composite
def deeply_nested_reviews(draw: st.DrawFn) -> bytes:
    """Nesting from just under to far over the limits, as the whole body, inside the pod, or inside
    an annotation that injection parses (YAML or JSON)."""
    depth = draw(st.integers(40, 3000))
    opener, closer = draw(st.sampled_from(SHAPES))
    text = opener * depth + "1" + (closer * depth if draw(st.booleans()) else "")
    where = draw(st.sampled_from(["body", "pod", "proxy-config", "status"]))
    if where == "body":
        return text.encode()
    doc = copy.deepcopy(VALID)
    pod = doc["request"]["object"]
    if where == "pod":
        path = draw(st.sampled_from([p for p in _paths(pod) if p]))
        parent = pod
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = "@DEEP@"
        return json.dumps(doc).replace('"@DEEP@"', text).encode()
    name = "proxy.istio.io/config" if where == "proxy-config" else "sidecar.istio.io/status"
    pod["metadata"]["annotations"] = {name: text}
    return json.dumps(doc).encode()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(body=deeply_nested_reviews())
def test_deeply_nested_input_never_gets_a_5xx(webhook: Running, body: bytes) -> None:
    status, review = post_webhook(webhook, body)
    assert status < 500, review
    assert isinstance(review, dict) and review.get("kind") == "AdmissionReview", review
    response = review["response"]
    if status != 200 or response["allowed"] is False:
        assert response["status"]["message"], response


# -- annotation values that look like numbers ----------------------------------------------------

# ASCII digits and signs mixed with digits Python's isdigit, int() or `\d` also take: superscripts (int()
# refuses them), Arabic-Indic, Devanagari and fullwidth digits (int() reads them), and what float()
# reads besides numbers. Kubernetes and Istio read none of those.
_NUMBERISH = "0123456789+-._ \n\u00b2\u00b3\u00b9\u0660\u0661\u0668\u0966\u0967\uff11\uff10mMKisuh"
_DIGITS = "0123456789\u00b2\u00b3\u00b9\u0660\u0661\u0668\u0966\u0967\uff11\uff10"
numberish = st.one_of(
    st.builds(operator.add, st.text(alphabet=_DIGITS, min_size=1, max_size=5), st.sampled_from(["", "m", "s", "Mi"])),
    st.text(alphabet=_NUMBERISH, max_size=8),
    st.sampled_from(["nan", "inf", "-0", "0x10", "1_000", " 80 ", "80\n", "1e400", "9" * 30, "\u0668\u0660"]),
)
ANNOTATIONS_READ = sorted(SUPPORTED_ANNOTATIONS | {"prometheus.io/port", "prometheus.io/path", "prometheus.io/scrape"})


@settings(max_examples=600, deadline=None)
@given(annotation=st.sampled_from(ANNOTATIONS_READ), value=numberish)
def test_an_annotation_value_is_used_or_refused_naming_the_annotation(annotation: str, value: str) -> None:
    """Never another exception: the webhook answered one (a prometheus.io/port of "²") with HTTP 500."""
    _used_or_refused(annotation, value)


@pytest.mark.parametrize("annotation", ANNOTATIONS_READ)
@pytest.mark.parametrize("value", ["9" * 5000, "0." + "9" * 5000, "1e" + "9" * 5000])
def test_a_number_of_thousands_of_digits_is_used_or_refused_naming_the_annotation(annotation: str, value: str) -> None:
    """`int()` raises on more than 4,300 digits: a prometheus.io/port so long made the review raise."""
    _used_or_refused(annotation, value)


def _used_or_refused(annotation: str, value: str) -> None:
    pod = {
        "metadata": {"name": "p", "annotations": {annotation: value}},
        "spec": {"containers": [{"name": "app", "image": "a", "readinessProbe": {"httpGet": {"port": 80}}}]},
    }
    try:
        injected = inject_pod(pod, DEFAULT_PARAMS)
    except InjectionError as exc:
        assert exc.annotation == annotation and str(exc).startswith(f"annotation {annotation}: invalid value")
        return
    # What the injector admits, the injected containers start with: a pod is never admitted to fail there.
    agent_options(injected)
    code, stderr = iptables_dry_run(injected)
    assert code == 0, stderr


_TRAFFIC = [
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
    "traffic.sidecar.istio.io/kubevirtInterfaces",
    "istio.io/reroute-virtual-interfaces",
    "sidecar.istio.io/interceptionMode",
    "status.sidecar.istio.io/port",
]
_TRAFFIC_ITEMS = [
    *("80", "0", "1", "65535", "65536", "15001", "15006", "15020", "15090", "*", "", " 80", "80-90", "-1"),
    *("10.0.0.0/8", "10.0.0.1/32", "0.0.0.0/0", "::/0", "fd00::/8", "fd00::1/128", "10.0.0.1", "fe80::%eth0/64"),
    *("eth0", "net1", "a b", "REDIRECT", "NONE", "TPROXY", "redirect"),
]
traffic_values = st.lists(st.sampled_from(_TRAFFIC_ITEMS), min_size=1, max_size=4).map(",".join)


@settings(max_examples=400, deadline=None)
@given(annotations=st.dictionaries(st.sampled_from(_TRAFFIC), traffic_values, min_size=1, max_size=4))
def test_traffic_annotations_the_injector_admits_are_rules_the_init_container_installs(
    annotations: dict[str, str],
) -> None:
    """Every combination of capture annotations is refused naming one of them, or gives an istio-init whose
    args `meshplane iptables` turns into rules, and an istio-proxy the agent starts."""
    pod = {
        "metadata": {"name": "p", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 8080}]}]},
    }
    try:
        injected = inject_pod(pod, DEFAULT_PARAMS)
    except InjectionError as exc:
        assert exc.annotation in annotations
        return
    agent_options(injected)
    code, stderr = iptables_dry_run(injected)
    assert code == 0, stderr
