"""charts/istiod's injection webhooks: Istio's selector table, the default revision, revision tags.

The chart is rendered with the real helm; which webhook fires for a namespace and pod is evaluated
with Kubernetes' label-selector rules over the rendered selectors of two releases side by side.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import pytest

from tests.charts.helm import CHART, REV, Obj, Objects, helm, render, requires_helm

pytestmark = requires_helm


# -- the injection webhooks --------------------------------------------------------------------


def expressions(*terms: tuple[str, str, list[str] | None]) -> dict[str, Any]:
    return {
        "matchExpressions": [
            {"key": key, "operator": op, **({"values": values} if values is not None else {})}
            for key, op, values in terms
        ]
    }


def selector_table(rev: str) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """ISTIO-FACTS.md's table: webhook prefix -> (namespaceSelector, objectSelector)."""
    no_opt_out = ("sidecar.istio.io/inject", "NotIn", ["false"])
    return {
        "rev.namespace.": (
            expressions(("istio.io/rev", "In", [rev]), ("istio-injection", "DoesNotExist", None)),
            expressions(no_opt_out),
        ),
        "rev.object.": (
            expressions(("istio.io/rev", "DoesNotExist", None), ("istio-injection", "DoesNotExist", None)),
            expressions(no_opt_out, ("istio.io/rev", "In", [rev])),
        ),
        "namespace.": (expressions(("istio-injection", "In", ["enabled"])), expressions(no_opt_out)),
        "object.": (
            expressions(("istio-injection", "DoesNotExist", None), ("istio.io/rev", "DoesNotExist", None)),
            expressions(("sidecar.istio.io/inject", "In", ["true"]), ("istio.io/rev", "DoesNotExist", None)),
        ),
    }


def webhooks_by_prefix(config: Obj) -> dict[str, Obj]:
    suffix = "sidecar-injector.istio.io"
    out = {}
    for hook in config["webhooks"]:
        assert hook["name"].endswith(suffix), hook["name"]
        out[hook["name"].removesuffix(suffix)] = hook
    return out


def assert_webhooks(config: Obj, *, selects: str, service: str, prefixes: list[str]) -> None:
    """`config` holds the webhooks `prefixes` with the table's selectors for istio.io/rev=`selects`."""
    assert config["metadata"]["labels"]["app"] == "sidecar-injector"
    hooks = webhooks_by_prefix(config)
    assert list(hooks) == prefixes
    table = selector_table(selects)
    for prefix, hook in hooks.items():
        assert (hook["namespaceSelector"], hook["objectSelector"]) == table[prefix], prefix
        assert hook["clientConfig"] == {
            "service": {"name": service, "namespace": "istio-system", "path": "/inject", "port": 443}
        }, prefix
        assert hook["rules"] == [
            {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
        ]
        assert hook["failurePolicy"] == "Fail"
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["reinvocationPolicy"] == "Never"
        assert hook["timeoutSeconds"] == 10


def test_canary_gets_only_the_revision_webhooks(canary: Objects) -> None:
    config = canary["MutatingWebhookConfiguration", f"istio-sidecar-injector-{REV}"]
    assert config["metadata"]["labels"]["istio.io/rev"] == REV
    assert_webhooks(config, selects=REV, service=f"istiod-{REV}", prefixes=["rev.namespace.", "rev.object."])


def test_webhooks_leave_the_ca_bundle_to_the_control_plane(canary: Objects) -> None:
    """Helm never owns caBundle, so an upgrade neither conflicts with nor resets meshplane's patch."""
    config = canary["MutatingWebhookConfiguration", f"istio-sidecar-injector-{REV}"]
    assert all("caBundle" not in hook["clientConfig"] for hook in config["webhooks"])


@pytest.mark.parametrize("revision", ["", "default"])
def test_default_revision_is_unsuffixed_and_gets_all_four_webhooks(helm_home: pathlib.Path, revision: str) -> None:
    objects = render(helm_home, "--set", f"revision={revision}", release="istiod")
    assert ("Deployment", "istiod") in objects
    assert ("ConfigMap", "istio") in objects
    assert ("ConfigMap", "istio-sidecar-injector") in objects
    assert ("ClusterRole", "istiod-clusterrole-istio-system") in objects
    args = objects["Deployment", "istiod"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--revision=default" in args
    config = objects["MutatingWebhookConfiguration", "istio-sidecar-injector"]
    assert config["metadata"]["labels"]["istio.io/rev"] == "default"
    assert_webhooks(
        config, selects="default", service="istiod", prefixes=["rev.namespace.", "rev.object.", "namespace.", "object."]
    )


def test_default_revision_value_gives_a_named_revision_the_legacy_webhooks(helm_home: pathlib.Path) -> None:
    objects = render(helm_home, "--set", f"revision={REV}", "--set", f"defaultRevision={REV}")
    config = objects["MutatingWebhookConfiguration", f"istio-sidecar-injector-{REV}"]
    assert_webhooks(
        config,
        selects=REV,
        service=f"istiod-{REV}",
        prefixes=["rev.namespace.", "rev.object.", "namespace.", "object."],
    )
    other = render(helm_home, "--set", "revision=asm-1234-1", "--set", f"defaultRevision={REV}")
    assert list(webhooks_by_prefix(other["MutatingWebhookConfiguration", "istio-sidecar-injector-asm-1234-1"])) == [
        "rev.namespace.",
        "rev.object.",
    ]


def test_webhook_options_from_values(helm_home: pathlib.Path) -> None:
    objects = render(
        helm_home,
        "--set", "sidecarInjectorWebhook.enableNamespacesByDefault=true",
        "--set", "sidecarInjectorWebhook.reinvocationPolicy=IfNeeded",
        release="istiod",
    )  # fmt: skip
    hooks = webhooks_by_prefix(objects["MutatingWebhookConfiguration", "istio-sidecar-injector"])
    assert list(hooks) == ["rev.namespace.", "rev.object.", "namespace.", "object.", "auto."]
    assert {hook["reinvocationPolicy"] for hook in hooks.values()} == {"IfNeeded"}
    assert hooks["auto."]["objectSelector"] == expressions(
        ("sidecar.istio.io/inject", "DoesNotExist", None), ("istio.io/rev", "DoesNotExist", None)
    )
    system = ["kube-system", "kube-public", "kube-node-lease", "local-path-storage"]
    assert ("kubernetes.io/metadata.name", "NotIn", system) in [
        (e["key"], e["operator"], e.get("values")) for e in hooks["auto."]["namespaceSelector"]["matchExpressions"]
    ]


def test_revision_tags_get_webhooks_and_services_pointing_at_the_revision(helm_home: pathlib.Path) -> None:
    objects = render(helm_home, "--set", f"revision={REV}", "--set-json", 'revisionTags=["default","prod"]')
    for tag, prefixes in (
        ("prod", ["rev.namespace.", "rev.object."]),
        ("default", ["rev.namespace.", "rev.object.", "namespace.", "object."]),
    ):
        config = objects["MutatingWebhookConfiguration", f"istio-revision-tag-{tag}"]
        assert {k: config["metadata"]["labels"][k] for k in ("istio.io/tag", "istio.io/rev")} == {
            "istio.io/tag": tag,
            "istio.io/rev": REV,
        }
        assert_webhooks(config, selects=tag, service=f"istiod-{REV}", prefixes=prefixes)
        service = objects["Service", f"istiod-revision-tag-{tag}"]
        assert service["metadata"]["labels"]["istio.io/tag"] == tag
        assert service["spec"] == objects["Service", f"istiod-{REV}"]["spec"]


def test_default_tag_takes_the_legacy_webhooks_from_the_default_revision(helm_home: pathlib.Path) -> None:
    objects = render(
        helm_home,
        "--set",
        f"revision={REV}",
        "--set",
        f"defaultRevision={REV}",
        "--set-json",
        'revisionTags=["default"]',
    )
    own = webhooks_by_prefix(objects["MutatingWebhookConfiguration", f"istio-sidecar-injector-{REV}"])
    tag = webhooks_by_prefix(objects["MutatingWebhookConfiguration", "istio-revision-tag-default"])
    assert list(own) == ["rev.namespace.", "rev.object."]
    assert list(tag) == ["rev.namespace.", "rev.object.", "namespace.", "object."]


def test_a_tag_naming_the_revision_is_refused(helm_home: pathlib.Path) -> None:
    result = helm(
        helm_home,
        "template",
        "x",
        str(CHART),
        "--set",
        f"revision={REV}",
        "--set",
        f"revisionTags={{{REV}}}",
        check=False,
    )
    assert result.returncode != 0
    assert f'revisionTags: tag "{REV}" names this release\'s revision' in result.stderr


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (matchExpressions only, as the chart writes them)."""
    for term in selector.get("matchExpressions", []):
        key, op, values = term["key"], term["operator"], term.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[op]
        if not ok:
            return False
    return True


@pytest.mark.parametrize(
    ("namespace_labels", "pod_labels", "fires"),
    [
        ({"istio.io/rev": REV}, {}, "rev.namespace."),
        ({"istio.io/rev": REV}, {"sidecar.istio.io/inject": "false"}, None),
        ({"istio.io/rev": REV, "istio-injection": "enabled"}, {}, "namespace."),  # the legacy label wins
        ({"istio-injection": "enabled"}, {"istio.io/rev": REV}, "namespace."),
        ({"istio-injection": "disabled"}, {"istio.io/rev": REV}, None),
        ({}, {"istio.io/rev": REV}, "rev.object."),
        ({}, {"sidecar.istio.io/inject": "true"}, "object."),
        ({}, {"sidecar.istio.io/inject": "true", "istio.io/rev": REV}, "rev.object."),
        ({}, {}, None),
        ({"istio.io/rev": "asm-1234-1"}, {"istio.io/rev": REV}, None),  # the namespace's revision beats the pod's
    ],
)
def test_exactly_one_webhook_of_canary_and_default_fires(
    helm_home: pathlib.Path, namespace_labels: dict[str, str], pod_labels: dict[str, str], fires: str | None
) -> None:
    """The canary release and the default revision's release installed side by side."""
    hooks: list[tuple[str, Obj]] = []
    for args, release in ((("--set", f"revision={REV}"), f"istiod-{REV}"), ((), "istiod")):
        for (kind, _), obj in render(helm_home, *args, release=release).items():
            if kind == "MutatingWebhookConfiguration":
                hooks += [(obj["metadata"]["labels"]["istio.io/rev"], hook) for hook in obj["webhooks"]]
    fired = [
        (rev, hook["name"].removesuffix("sidecar-injector.istio.io"))
        for rev, hook in hooks
        if matches(hook["namespaceSelector"], namespace_labels) and matches(hook["objectSelector"], pod_labels)
    ]
    expected = {None: [], "namespace.": [("default", "namespace.")], "object.": [("default", "object.")]}
    assert fired == expected.get(fires, [(REV, fires)])
