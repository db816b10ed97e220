"""Which injection webhooks fire for a pod, and whether the revision behind each would inject it.

Two steps, as in a cluster:
1. The API server: a webhook fires when its `namespaceSelector` matches the labels of the pod's
   namespace and its `objectSelector` matches the pod's labels (Kubernetes LabelSelector rules:
   `matchLabels` and `matchExpressions` with In, NotIn, Exists, DoesNotExist, all ANDed; an absent
   or empty selector matches everything; an invalid one matches nothing, as the API server's
   matcher treats a selector it cannot parse). Configurations are taken in order of name and
   their webhooks in order, as admission calls them.
2. The injector of the webhook's revision (`webhook.policy.injection_required`, with that
   revision's injector ConfigMap): hostNetwork, the system namespaces, the
   `sidecar.istio.io/inject` label/annotation, neverInjectSelector, alwaysInjectSelector, policy.

`evaluate()` returns both steps for every injection webhook, so callers can say why each fires or
not. It never raises: a pod the injector would reject (an invalid inject value) counts as not
injected, with the injector's message as the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.ops.cluster import ClusterState, InjectorConfig, Pod, Webhook
from webhook.policy import injection_required
from webhook.validate import InjectionError

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _requirement_matches(term: Any, labels: Mapping[str, str]) -> bool | None:
    """One matchExpressions term; None when the term is invalid."""
    if not isinstance(term, Mapping):
        return None
    key, op, values = term.get("key"), term.get("operator"), term.get("values") or []
    if not isinstance(key, str) or op not in _OPERATORS or not isinstance(values, list):
        return None
    if (op in ("In", "NotIn")) != bool(values):
        return None  # In/NotIn need values, Exists/DoesNotExist must have none
    present = key in labels
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    return present if op == "Exists" else not present


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (see the module docstring)."""
    if selector is None:
        return True
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not isinstance(match_labels, Mapping) or not isinstance(expressions, list):
        return False
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    results = [_requirement_matches(term, labels) for term in expressions]
    return None not in results and all(results)


@dataclass(frozen=True, kw_only=True)
class HookResult:
    """One injection webhook evaluated for one pod."""

    config: InjectorConfig
    webhook: Webhook
    namespace_matches: bool
    object_matches: bool
    injects: bool  # fires, and the revision's injector adds a sidecar
    reason: str  # the injector's reason when it fires; "" otherwise

    @property
    def fires(self) -> bool:
        return self.namespace_matches and self.object_matches

    @property
    def revision(self) -> str:
        return self.config.revision


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """Every injection webhook evaluated for one pod, in admission order."""

    results: tuple[HookResult, ...]

    @property
    def firing(self) -> tuple[HookResult, ...]:
        return tuple(r for r in self.results if r.fires)

    @property
    def injecting(self) -> tuple[HookResult, ...]:
        return tuple(r for r in self.results if r.injects)

    @property
    def ambiguous(self) -> bool:
        """Several webhooks would inject the pod (an overlap: each adds its sidecar in turn)."""
        return len(self.injecting) > 1

    @property
    def revision(self) -> str | None:
        """The revision that would inject the pod now; None when none would, or several would."""
        injecting = self.injecting
        return injecting[0].revision if len(injecting) == 1 else None


def evaluate(
    state: ClusterState,
    *,
    namespace: str,
    namespace_labels: Mapping[str, str],
    pod: Mapping[str, Any],
) -> Evaluation:
    """Evaluate every injection webhook of `state` for `pod` (a Pod manifest) created in `namespace`."""
    meta = pod.get("metadata")
    raw_labels = meta.get("labels") if isinstance(meta, Mapping) else None
    labels = (
        {k: v for k, v in (raw_labels or {}).items() if isinstance(v, str)} if isinstance(raw_labels, Mapping) else {}
    )
    results = []
    for config in state.injectors:
        for hook in config.webhooks:
            ns_ok = selector_matches(hook.namespace_selector, namespace_labels)
            obj_ok = selector_matches(hook.object_selector, labels)
            injects, reason = False, ""
            if ns_ok and obj_ok:
                try:
                    decision = injection_required(
                        pod, namespace=namespace, config=state.injection_config(config.revision)
                    )
                except InjectionError as exc:
                    injects, reason = False, f"the injector rejects the pod: {exc}"
                else:
                    injects, reason = decision.inject, decision.reason
            results.append(
                HookResult(
                    config=config,
                    webhook=hook,
                    namespace_matches=ns_ok,
                    object_matches=obj_ok,
                    injects=injects,
                    reason=reason,
                )
            )
    return Evaluation(results=tuple(results))


def namespace_revision(state: ClusterState, namespace: str) -> str | None:
    """The revision that would inject a plain pod (no injection labels) created in `namespace` now."""
    ns = state.namespace(namespace)
    return evaluate(state, namespace=namespace, namespace_labels=ns.labels, pod={"metadata": {}}).revision


@dataclass(frozen=True, kw_only=True)
class PodVerdict:
    """A running pod against what would inject it now.

    `have`: the revision whose sidecar it runs (None: no sidecar); `want`: the revision that would
    inject it if it were created now (None: none would, or several would). `needs_restart`: `have`
    differs from `want`, the pod is running (not deleting, not Succeeded/Failed), not injected by
    several webhooks at once, and not carrying an `istio-proxy` container of unknown origin.
    """

    pod: Pod
    evaluation: Evaluation
    have: str | None
    want: str | None
    needs_restart: bool


def running(pod: Pod) -> bool:
    """Not being deleted, and not finished (Succeeded or Failed)."""
    status = pod.manifest.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    meta = pod.manifest.get("metadata")
    deleting = isinstance(meta, Mapping) and bool(meta.get("deletionTimestamp"))
    return not deleting and phase not in ("Succeeded", "Failed")


def judge_pod(state: ClusterState, pod: Pod) -> PodVerdict:
    """Evaluate `pod` as it is now (see PodVerdict)."""
    ns = state.namespace(pod.namespace)
    evaluation = evaluate(state, namespace=pod.namespace, namespace_labels=ns.labels, pod=pod.manifest)
    have = pod.injected_revision if pod.proxy_image is not None else None
    want = evaluation.revision
    unknown_sidecar = pod.proxy_image is not None and have is None
    needs_restart = have != want and running(pod) and not evaluation.ambiguous and not unknown_sidecar
    return PodVerdict(pod=pod, evaluation=evaluation, have=have, want=want, needs_restart=needs_restart)
