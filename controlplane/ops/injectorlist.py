"""`meshplane injector list`: which revision injects each namespace, and what its pods run.

    meshplane injector list [-n NS] [--show-pods] [--istio-namespace NS] [--kubeconfig FILE] [--context NAME]

Two tables, as `istioctl x injector list` prints them:
1. `NAMESPACE ISTIO-REVISION POD-REVISIONS`, one row per namespace and revision its pods run.
   ISTIO-REVISION is the revision that would inject a new pod there now (`MISSING/<rev>` when the
   namespace names a revision or tag nothing installs, `MISSING/istio-injection` for
   `istio-injection` without a default revision); POD-REVISIONS reads `<rev>: N (injection
   disabled: D) NEEDS RESTART: M`, `<non-Istio>` for pods without a sidecar, `<no pods>` for an
   injected namespace without pods. A pod needs a restart when the revision that injected it
   differs from the one its namespace and labels select now (the rule `meshplane analyze` uses);
   `--show-pods` names those pods after the count.
2. `NAMESPACES INJECTOR-HOOK ISTIO-REVISION SIDECAR-IMAGE`, per injection webhook configuration
   the namespaces its namespace webhooks select (`DOES NOT AUTOINJECT` for none) and the sidecar
   image of its revision.

The control plane's namespace and the namespaces the injector never injects are not listed.
Exit status: 0; 1 when the cluster cannot be read; 2 for bad flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.kube.client import KubeApi
from controlplane.ops import common
from controlplane.ops.cluster import INJECTION_LABEL, REVISION_LABEL, ClusterState, Namespace
from controlplane.ops.matcher import judge_pod, namespace_revision, selector_matches
from controlplane.settings import IGNORED_NAMESPACES

NON_ISTIO = "<non-Istio>"
NAMESPACE_HOOKS = ("rev.namespace.sidecar-injector.istio.io", "namespace.sidecar-injector.istio.io")


@dataclass(kw_only=True)
class _Count:
    pods: int = 0
    disabled: int = 0
    restart: list[str] = field(default_factory=list)


def listed_namespaces(state: ClusterState, *, istio_namespace: str) -> list[Namespace]:
    return [ns for ns in state.namespaces if ns.name != istio_namespace and ns.name not in IGNORED_NAMESPACES]


def istio_revision(state: ClusterState, ns: Namespace) -> str:
    """ISTIO-REVISION of `ns`: the injecting revision, `MISSING/...` or "" (see the module docstring)."""
    found = namespace_revision(state, ns.name)
    if found is not None:
        return found
    rev, legacy = ns.labels.get(REVISION_LABEL, ""), ns.labels.get(INJECTION_LABEL)
    if not rev and (legacy is None or legacy == "disabled"):
        return ""
    return f"MISSING/{rev}" if rev else f"MISSING/{INJECTION_LABEL}"


def _render(revision: str, count: _Count, *, show_pods: bool) -> str:
    if count.pods == 0:
        return "<no pods>"
    text = f"{revision}: {count.pods}"
    if count.disabled:
        text += f" (injection disabled: {count.disabled})"
    if count.restart:
        text += f" NEEDS RESTART: {len(count.restart)}"
        if show_pods:
            text += f" ({', '.join(sorted(count.restart))})"
    return text


def namespace_table(state: ClusterState, namespaces: Sequence[Namespace], *, show_pods: bool = False) -> str:
    """Table 1, or Istio's line for no injected namespace."""
    rows: list[tuple[str, str, str]] = []
    for ns in namespaces:
        revision = istio_revision(state, ns)
        counts: dict[str, _Count] = {}
        for pod in state.pods:
            if pod.namespace != ns.name:
                continue
            verdict = judge_pod(state, pod)
            count = counts.setdefault(verdict.have or NON_ISTIO, _Count())
            count.pods += 1
            if pod.injection_disabled:
                count.disabled += 1
            elif verdict.needs_restart:
                count.restart.append(pod.name)
        if not counts and revision:
            counts[revision] = _Count()
        rows += [(ns.name, revision, _render(rev, counts[rev], show_pods=show_pods)) for rev in sorted(counts)]
    if not rows:
        return "No Istio injected namespaces present."
    return common.table([("NAMESPACE", "ISTIO-REVISION", "POD-REVISIONS"), *rows])


def hook_table(state: ClusterState, namespaces: Sequence[Namespace]) -> str:
    """Table 2, or Istio's line for no injection webhooks."""
    if not state.injectors:
        return "No Istio injection hooks present."
    rows: list[tuple[str, str, str, str]] = []
    for config in state.injectors:
        image = state.proxy_image(config.revision) or ""
        matched = [
            ns.name
            for ns in namespaces
            if any(
                h.name in NAMESPACE_HOOKS and selector_matches(h.namespace_selector, ns.labels) for h in config.webhooks
            )
        ]
        for name in matched or ["DOES NOT AUTOINJECT"]:
            rows.append((name, config.name, config.revision, image))
    return common.table([("NAMESPACES", "INJECTOR-HOOK", "ISTIO-REVISION", "SIDECAR-IMAGE"), *rows])


def render(state: ClusterState, *, istio_namespace: str = "istio-system", show_pods: bool = False) -> str:
    namespaces = listed_namespaces(state, istio_namespace=istio_namespace)
    return f"{namespace_table(state, namespaces, show_pods=show_pods)}\n\n{hook_table(state, namespaces)}"


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "injector",
        help="list sidecar injectors and the sidecar revisions pods run",
        description="Inspect the sidecar injectors of the cluster.",
    )
    commands = p.add_subparsers(dest="injector_command", metavar="COMMAND", required=True)
    lister: argparse.ArgumentParser = commands.add_parser(
        "list",
        help="list injected namespaces, the revisions their pods run, and the injection webhooks",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lister.add_argument("-n", "--namespace", help="list only this namespace [default: every namespace]")
    lister.add_argument("--show-pods", action="store_true", help="name the pods that need a restart")
    common.add_istio_namespace_flag(lister)
    common.add_connection_flags(lister)
    lister.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    async def body(api: KubeApi) -> int:
        state = await common.read_or_fail(api, namespace=args.namespace)
        print(render(state, istio_namespace=args.istio_namespace, show_pods=args.show_pods))
        return 0

    return common.run_against_cluster("meshplane injector list", args, body)
