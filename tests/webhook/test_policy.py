"""The injection policy: Istio's server-side order, one table row per rule."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.config import InjectionConfig
from webhook.configparse import parse_injection_config
from webhook.policy import injection_required
from webhook.validate import InjectionError

SELECTORS = parse_injection_config(
    injector={
        "config": """
neverInjectSelector:
- matchLabels: {role: batch}
- matchExpressions:
  - {key: tier, operator: In, values: [infra, system]}
alwaysInjectSelector:
- matchExpressions:
  - {key: mesh, operator: Exists}
"""
    },
    mesh=None,
)
DISABLED = InjectionConfig(policy="disabled", always_inject_selector=SELECTORS.always_inject_selector)
ENABLED = InjectionConfig(policy="enabled", never_inject_selector=SELECTORS.never_inject_selector)
BOTH = SELECTORS


def pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels or {}, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app"}], **spec},
    }


@pytest.mark.parametrize(
    ("name", "p", "namespace", "config", "inject"),
    [
        ("default policy enabled injects", pod(), "shop", InjectionConfig(), True),
        ("policy disabled skips", pod(), "shop", DISABLED, False),
        (
            "hostNetwork skips even when asked",
            pod({"sidecar.istio.io/inject": "true"}, hostNetwork=True),
            "shop",
            BOTH,
            False,
        ),
        ("kube-system skips even when asked", pod({"sidecar.istio.io/inject": "true"}), "kube-system", BOTH, False),
        ("kube-public skips", pod(), "kube-public", InjectionConfig(), False),
        ("kube-node-lease skips", pod(), "kube-node-lease", InjectionConfig(), False),
        ("local-path-storage skips", pod(), "local-path-storage", InjectionConfig(), False),
        ("label true beats policy disabled", pod({"sidecar.istio.io/inject": "true"}), "shop", DISABLED, True),
        ("label false beats policy enabled", pod({"sidecar.istio.io/inject": "false"}), "shop", ENABLED, False),
        (
            "annotation true beats policy disabled",
            pod(annotations={"sidecar.istio.io/inject": "true"}),
            "shop",
            DISABLED,
            True,
        ),
        ("annotation false skips", pod(annotations={"sidecar.istio.io/inject": "false"}), "shop", ENABLED, False),
        (
            "label wins over annotation",
            pod({"sidecar.istio.io/inject": "true"}, {"sidecar.istio.io/inject": "false"}),
            "shop",
            ENABLED,
            True,
        ),
        (
            "explicit true beats neverInjectSelector",
            pod({"role": "batch", "sidecar.istio.io/inject": "true"}),
            "shop",
            BOTH,
            True,
        ),
        ("empty label value means unset", pod({"sidecar.istio.io/inject": "", "role": "batch"}), "shop", BOTH, False),
        ("neverInjectSelector matchLabels skips", pod({"role": "batch"}), "shop", ENABLED, False),
        ("neverInjectSelector matchExpressions skips", pod({"tier": "infra"}), "shop", ENABLED, False),
        ("neverInjectSelector not matching injects", pod({"tier": "web"}), "shop", ENABLED, True),
        ("alwaysInjectSelector beats policy disabled", pod({"mesh": ""}), "shop", DISABLED, True),
        ("neverInjectSelector beats alwaysInjectSelector", pod({"mesh": "yes", "role": "batch"}), "shop", BOTH, False),
        ("hostNetwork false is not hostNetwork", pod(hostNetwork=False), "shop", InjectionConfig(), True),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_policy_order(name: str, p: dict[str, Any], namespace: str, config: InjectionConfig, inject: bool) -> None:
    decision = injection_required(p, namespace=namespace, config=config)
    assert decision.inject is inject, decision.reason
    assert decision.reason


def test_the_reason_says_which_rule_decided() -> None:
    assert "hostNetwork" in injection_required(pod(hostNetwork=True), namespace="a", config=BOTH).reason
    assert "kube-system" in injection_required(pod(), namespace="kube-system", config=BOTH).reason
    assert (
        "label sidecar.istio.io/inject=false"
        in injection_required(pod({"sidecar.istio.io/inject": "false"}), namespace="a", config=BOTH).reason
    )
    assert "neverInjectSelector[1]" in injection_required(pod({"tier": "system"}), namespace="a", config=BOTH).reason
    assert "alwaysInjectSelector[0]" in injection_required(pod({"mesh": "1"}), namespace="a", config=DISABLED).reason
    assert injection_required(pod(), namespace="a", config=DISABLED).reason == "policy disabled"


@pytest.mark.parametrize("value", ["enabled", "yes", "True", "FALSE", "1", "on", " true"])
@pytest.mark.parametrize("kind", ["label", "annotation"])
def test_an_invalid_inject_value_is_rejected_naming_it(value: str, kind: str) -> None:
    p = (
        pod({"sidecar.istio.io/inject": value})
        if kind == "label"
        else pod(annotations={"sidecar.istio.io/inject": value})
    )
    with pytest.raises(InjectionError) as caught:
        injection_required(p, namespace="shop", config=InjectionConfig())
    assert caught.value.annotation == "sidecar.istio.io/inject"
    assert caught.value.value == value
    assert str(caught.value).startswith(f"{kind} sidecar.istio.io/inject: invalid value")
    assert '"true" or "false"' in str(caught.value)


def test_offline_injection_ignores_policy_but_not_selectors_or_opt_outs() -> None:
    assert injection_required(pod(), namespace="a", config=DISABLED, offline=True).inject
    assert not injection_required(pod({"role": "batch"}), namespace="a", config=BOTH, offline=True).inject
    assert not injection_required(
        pod({"sidecar.istio.io/inject": "false"}), namespace="a", config=BOTH, offline=True
    ).inject


@pytest.mark.parametrize("p", [{}, {"spec": "x", "metadata": 3}, {"metadata": {"labels": ["a"], "annotations": None}}])
def test_malformed_pods_do_not_crash_the_policy(p: dict[str, Any]) -> None:
    assert injection_required(p, namespace="a", config=InjectionConfig()).inject
