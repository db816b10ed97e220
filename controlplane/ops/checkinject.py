"""`meshplane check-inject`: which injection webhook would inject a pod, with which revision, and why.

    meshplane check-inject [-n NS] POD | -l SELECTOR | -f FILE   [--kubeconfig FILE] [--context NAME]

One row per injection webhook configuration, as `istioctl x check-inject` prints it: `WEBHOOK
REVISION INJECTED REASON` (✔ or ✘). The pod is an existing one (POD), each pod matching
`-l SELECTOR` in the namespace (a POD column is added), or a manifest (`-f FILE`, `-` for stdin: a
Pod, or a Deployment, StatefulSet, DaemonSet, ReplicaSet or Job whose pod template is taken) for
"what would happen if I created this". The namespace is `-n`, else the manifest's, else the
kubeconfig context's. A webhook whose selectors match still does not inject when its revision's
injector skips the pod (hostNetwork, a system namespace, `sidecar.istio.io/inject` annotation,
neverInjectSelector, policy): the reason says so.

Exit status: 0; 1 when several webhooks would inject one pod (the error names them), when no
injection webhook is installed, or when the pod, namespace, file or cluster cannot be read; 2 for
bad flags.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from controlplane.kube.client import JsonObject, KubeApi, KubeApiError
from controlplane.model import yamltext
from controlplane.ops import common
from controlplane.ops.cluster import INJECTION_LABEL, ClusterState, InjectorConfig
from controlplane.ops.matcher import Evaluation, HookResult, evaluate

NEVER_MATCH = {"matchLabels": {"istio.io/deactivated": "never-match"}}
TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
HEADERS = ("WEBHOOK", "REVISION", "INJECTED", "REASON")
Row = tuple[str, str, bool, str]  # WEBHOOK, REVISION, injected, REASON


def _matched_label(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> str:
    """The first In/NotIn term of a matching selector whose key the object carries, as `key=value`."""
    for term in (selector or {}).get("matchExpressions") or []:
        if isinstance(term, Mapping) and term.get("operator") in ("In", "NotIn") and term.get("key") in labels:
            return f"{term['key']}={labels[term['key']]}"
    return ""


def _in_values(selectors: Sequence[Mapping[str, Any] | None]) -> str:
    return ", ".join(
        f"{term['key']}={value}"
        for selector in selectors
        for term in (selector or {}).get("matchExpressions") or []
        if isinstance(term, Mapping) and term.get("operator") == "In"
        for value in term.get("values") or []
    )


def _hook_reason(result: HookResult, ns_labels: Mapping[str, str], pod_labels: Mapping[str, str]) -> str | None:
    """Istio's reason for one webhook, or None when this webhook says nothing decisive."""
    hook = result.webhook
    if result.fires:
        ns_label = _matched_label(hook.namespace_selector, ns_labels)
        pod_label = _matched_label(hook.object_selector, pod_labels)
        if ns_label and pod_label:
            why = f"Namespace label {ns_label} matches, and pod label {pod_label} matches"
        elif ns_label:
            why = f"Namespace label {ns_label} matches"
            if "kubernetes.io/metadata.name" in ns_label:
                why += " (Automatic injection is enabled in all namespaces)."
        elif pod_label:
            why = f"Pod label {pod_label} matches"
        else:
            why = f"Webhook {hook.name} matches"
        return why if result.injects else f"{why}, but the injector skips the pod: {result.reason}"
    if result.namespace_matches:
        for term in (hook.object_selector or {}).get("matchExpressions") or []:
            value = pod_labels.get(str(term.get("key"))) if isinstance(term, Mapping) else None
            if value is None:
                continue
            if term.get("operator") == "DoesNotExist" or (
                term.get("operator") == "NotIn" and value in (term.get("values") or [])
            ):
                return f"Pod has {term['key']}={value} label, preventing injection"
    elif result.object_matches and ns_labels.get(INJECTION_LABEL, "enabled") != "enabled":
        return f"Namespace has {INJECTION_LABEL}={ns_labels[INJECTION_LABEL]} label, preventing injection"
    return None


def config_row(
    config: InjectorConfig, evaluation: Evaluation, ns_labels: Mapping[str, str], pod_labels: Mapping[str, str]
) -> Row:
    """(WEBHOOK, REVISION, injected, REASON) for one configuration."""
    results = [r for r in evaluation.results if r.config is config]
    for result in results:
        reason = _hook_reason(result, ns_labels, pod_labels)
        if reason is not None:
            return (config.name, config.revision, result.injects, reason)
    hooks = config.webhooks
    if any(h.namespace_selector == NEVER_MATCH and h.object_selector == NEVER_MATCH for h in hooks):
        return (
            config.name,
            config.revision,
            False,
            "The injection webhook is deactivated, and will never match labels.",
        )
    ns_terms = _in_values([h.namespace_selector for h in hooks])
    pod_terms = _in_values([h.object_selector for h in hooks])
    return (
        config.name,
        config.revision,
        False,
        f"No matching namespace labels ({ns_terms}) or pod labels ({pod_terms})",
    )


def check(state: ClusterState, *, namespace: str, pod: Mapping[str, Any]) -> list[Row]:
    """One row per injection webhook configuration of `state` for `pod` created in `namespace`."""
    ns_labels = state.namespace(namespace).labels
    evaluation = evaluate(state, namespace=namespace, namespace_labels=ns_labels, pod=pod)
    meta = pod.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    pod_labels = {k: v for k, v in labels.items() if isinstance(v, str)} if isinstance(labels, Mapping) else {}
    return [config_row(config, evaluation, ns_labels, pod_labels) for config in state.injectors]


def render(entries: Sequence[tuple[str, Sequence[Row]]], *, with_pod: bool = False) -> str:
    """The table for `(pod, rows)` entries; `with_pod` adds a leading POD column."""
    head: tuple[str, ...] = ("POD", *HEADERS) if with_pod else HEADERS
    body = [
        (*((pod,) if with_pod else ()), name, rev, "\u2714" if ok else "\u2718", why)
        for pod, rows in entries
        for name, rev, ok, why in rows
    ]
    return common.table([head, *body], padding=2)


def overlap_error(pod: str, rows: Sequence[Row]) -> str | None:
    """The error for several injecting webhooks, naming them; None when at most one injects."""
    injecting = [f"{name} (revision {rev})" for name, rev, ok, _ in rows if ok]
    if len(injecting) < 2:
        return None
    return (
        f"pod {pod} would be injected by several webhooks: {', '.join(injecting)}; each adds its sidecar in turn. "
        "Keep one injection label on the namespace and the pod, or deactivate the overlapping webhooks "
        "(meshplane analyze reports them as IST0139)"
    )


def pod_from_manifest(doc: Any, *, source: str) -> JsonObject:
    """The pod a manifest would create: a Pod, or the pod template of a workload. Raises CommandError."""
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        raise common.CommandError(f"{source}: expected a Pod or workload manifest with a kind")
    kind = doc["kind"]
    meta: dict[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
    if kind == "Pod":
        return doc
    if kind not in TEMPLATE_KINDS:
        raise common.CommandError(
            f"{source}: kind {kind} has no pod template (expected Pod or {', '.join(TEMPLATE_KINDS)})"
        )
    spec: dict[str, Any] = doc["spec"] if isinstance(doc.get("spec"), dict) else {}
    template = spec.get("template")
    if not isinstance(template, dict):
        raise common.CommandError(f"{source}: {kind} {meta.get('name', '')} has no spec.template")
    template_meta = dict(template.get("metadata") or {})
    template_meta.setdefault("name", meta.get("name", ""))
    if "namespace" in meta:
        template_meta["namespace"] = meta["namespace"]
    return {"kind": "Pod", "metadata": template_meta, "spec": template.get("spec") or {}}


def read_manifest(path: str) -> JsonObject:
    """The first YAML document of `path` (`-`: stdin) as a pod. Raises CommandError naming the file."""
    source = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text(encoding="utf-8")
        docs = [d for d in yamltext.kubectl_documents(text) if d is not None]
    except (OSError, UnicodeDecodeError) as exc:
        raise common.CommandError(f"-f {source}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise common.CommandError(f"-f {source}: not valid YAML{yamltext.error_place(exc, text)}: {problem}") from None
    if not docs:
        raise common.CommandError(f"-f {source}: holds no document")
    return pod_from_manifest(docs[0], source=f"-f {source}")


async def _pods(api: KubeApi, args: argparse.Namespace, namespace: str) -> list[JsonObject]:
    if args.pod:
        try:
            return [await api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{args.pod}")]
        except KubeApiError as exc:
            if exc.status == 404:
                raise common.CommandError(f'pod "{args.pod}" not found in namespace "{namespace}"') from None
            raise
    try:
        listed = await api.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", args.selector)]
        )
    except KubeApiError as exc:
        if exc.status == 400:
            raise common.CommandError(f"-l {args.selector!r}: {exc.message}", code=2) from None
        raise
    return [item for item in listed.get("items") or [] if isinstance(item, dict)]


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check-inject",
        help="show which injection webhook would inject a pod, and why",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pod", nargs="?", help="an existing pod")
    p.add_argument("-n", "--namespace", help="the pod's namespace [default: the kubeconfig context's]")
    p.add_argument("-l", "--selector", help="check every pod of the namespace matching this label selector")
    p.add_argument("-f", "--filename", help="check the pod a manifest would create (- for stdin)")
    common.add_connection_flags(p)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    given = [flag for flag, value in (("POD", args.pod), ("-l", args.selector), ("-f", args.filename)) if value]
    if len(given) != 1:
        problem = "give one of" if not given else f"{' and '.join(given)} exclude each other; give one of"
        args._parser.error(f"{problem}: POD, -l SELECTOR, -f FILE")

    async def body(api: KubeApi) -> int:
        manifest = read_manifest(args.filename) if args.filename else None
        manifest_ns = (manifest or {}).get("metadata", {}).get("namespace") if manifest else None
        namespace = args.namespace or manifest_ns or common.current_namespace(args)
        state = await common.read_or_fail(api, namespace=namespace, pods=False)
        if not state.injectors:
            raise common.CommandError(
                "no Istio injection hooks present (no MutatingWebhookConfiguration labelled istio.io/rev)"
            )
        pods = [manifest] if manifest is not None else await _pods(api, args, namespace)
        if not pods:
            print(f"No resources found in {namespace} namespace.", file=sys.stderr)
            return 0
        errors = []
        entries = []
        for pod in pods:
            name = f"{namespace}/{pod.get('metadata', {}).get('name', '')}"
            rows = check(state, namespace=namespace, pod=pod)
            entries.append((name, rows))
            if (error := overlap_error(name, rows)) is not None:
                errors.append(error)
        print(render(entries, with_pod=bool(args.selector)))
        for error in errors:
            print(f"meshplane check-inject: error: {error}", file=sys.stderr)
        return 1 if errors else 0

    return common.run_against_cluster("meshplane check-inject", args, body)
