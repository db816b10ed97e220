"""Should this pod get a sidecar? Istio's server-side order, as one pure function.

The order (first rule that decides wins):
1. `spec.hostNetwork: true` → no (iptables would rewrite the node's network).
2. The pod's namespace is one of `controlplane.settings.IGNORED_NAMESPACES` → no.
3. The `sidecar.istio.io/inject` label, else the annotation of the same name: `"true"` → yes,
   `"false"` → no.
4. A `neverInjectSelector` matching the pod's labels → no.
5. An `alwaysInjectSelector` matching the pod's labels → yes.
6. The config's policy: `enabled` → yes, `disabled` → no.

Invalid values of the inject label/annotation: only the exact strings `true` and `false` are
accepted. Istio logs a warning for anything else and falls back to the default policy, so a pod
labelled `sidecar.istio.io/inject: "enabled"` (a common mix-up with the namespace label) silently
gets a sidecar, and `"False"` slips past the webhook's `NotIn [false]` object selector and gets
one too. meshplane instead raises `InjectionError` naming the label or annotation and its value;
the webhook rejects the pod with that message and `meshplane inject` exits 1. An empty value is
treated as absent, as in Istio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.settings import IGNORED_NAMESPACES
from webhook.config import InjectionConfig
from webhook.validate import InjectionError, parse_bool

INJECT_KEY = "sidecar.istio.io/inject"


@dataclass(frozen=True, kw_only=True)
class Decision:
    inject: bool
    reason: str


def _string_map(value: Any) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def injection_required(
    pod: Mapping[str, Any], *, namespace: str, config: InjectionConfig, offline: bool = False
) -> Decision:
    """Decide per the module docstring. Raises `InjectionError` for an invalid inject value.

    `offline=True` (`meshplane inject`) treats the policy as `enabled`, as `istioctl kube-inject`
    does: asking to inject a manifest is the opt-in. Fields of the wrong type are read as absent
    (the injector reports malformed pods precisely); this function itself never raises otherwise.
    """
    spec = pod.get("spec")
    if isinstance(spec, Mapping) and spec.get("hostNetwork") is True:
        return Decision(inject=False, reason="the pod uses hostNetwork")
    if namespace in IGNORED_NAMESPACES:
        return Decision(inject=False, reason=f"namespace {namespace} is never injected")
    meta = pod.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    labels = _string_map(meta.get("labels"))
    annotations = _string_map(meta.get("annotations"))

    for kind, values in (("label", labels), ("annotation", annotations)):
        value = values.get(INJECT_KEY)
        if value is None or value == "":
            continue
        try:
            inject = parse_bool(value)
        except ValueError as exc:
            raise InjectionError(annotation=INJECT_KEY, value=value, problem=str(exc), kind=kind) from None
        return Decision(inject=inject, reason=f"{kind} {INJECT_KEY}={value}")

    for index, selector in enumerate(config.never_inject_selector):
        if selector.matches(labels):
            return Decision(inject=False, reason=f"neverInjectSelector[{index}] matches the pod's labels")
    for index, selector in enumerate(config.always_inject_selector):
        if selector.matches(labels):
            return Decision(inject=True, reason=f"alwaysInjectSelector[{index}] matches the pod's labels")
    if offline:
        return Decision(inject=True, reason="offline injection (policy is not consulted)")
    return Decision(inject=config.policy == "enabled", reason=f"policy {config.policy}")
