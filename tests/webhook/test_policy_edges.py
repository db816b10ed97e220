"""Injection policy edges: values of the wrong type, and the reasons users read in `meshplane inject`."""

from __future__ import annotations

from typing import Any

from webhook.config import InjectionConfig
from webhook.policy import injection_required

DISABLED = InjectionConfig(policy="disabled")


def test_a_non_string_inject_label_is_read_as_absent_so_the_policy_decides() -> None:
    # `sidecar.istio.io/inject: true` unquoted in YAML is a boolean; Kubernetes would refuse it, and the
    # policy must not read it as an opt-in (nor as a malformed value it reports).
    pod: dict[str, Any] = {"metadata": {"labels": {"sidecar.istio.io/inject": True}}, "spec": {}}
    decision = injection_required(pod, namespace="shop", config=DISABLED)
    assert not decision.inject and decision.reason == "policy disabled"


def test_offline_injection_says_the_policy_was_not_consulted() -> None:
    decision = injection_required({"metadata": {}, "spec": {}}, namespace="shop", config=DISABLED, offline=True)
    assert decision.inject and "offline injection" in decision.reason
