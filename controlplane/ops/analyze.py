"""`meshplane analyze`: what is wrong with injection in the cluster, and exactly what to restart.

    meshplane analyze [-n NS | -A] [-o text|json|yaml] [-S CODE=RESOURCE ...] [--failure-threshold LEVEL]
                      [--output-threshold LEVEL] [--without-revision R] [--istio-namespace NS]
                      [--kubeconfig FILE] [--context NAME]

Messages, with Istio's codes, levels and wording where Istio has one:
- IST0102 NamespaceNotInjected (Info): a namespace without `istio-injection` or `istio.io/rev`
  (the control plane's namespace and the namespaces the injector never injects are left out);
- IST0103 PodMissingProxy (Warning): a pod the injection webhooks and its revision's injector would
  inject now, running without `istio-proxy`: in `istio-injection=enabled`, `istio.io/rev` and
  tag-labelled namespaces alike (Istio only checks the first kind);
- IST0123 NamespaceMultipleInjectionLabels (Warning): `istio-injection` and `istio.io/rev` together;
- IST0139 InvalidWebhook (Error): injection webhooks that overlap (two fire for one combination of
  namespace and pod labels, as Istio probes them), or that call a Service that does not exist;
- IST0158 PodsIstioProxyImageMismatchInNamespace (Warning): pods whose `istio-proxy` image is not
  the one their selected revision injects now (tag-labelled namespaces included);
- MP0001 NamespaceRevisionNotFound (Error): a namespace asking for a revision or tag that is not
  installed (or for the default revision when none is);
- MP0002 PodRevisionNotFound (Error): the same for a pod's own `istio.io/rev` label, where it decides;
- MP0003 RestartNeeded (Warning): per owning Deployment/StatefulSet/DaemonSet (else ReplicaSet,
  Job or the bare pod), the pods whose injected revision differs from what their namespace and
  labels select now, with the command that fixes it.
- MP0004 SidecarRevisionNotInstalled (Error): the same, per owner, for running pods whose sidecar's
  revision is not installed (removed too early): their proxies get no configuration and no new
  certificates.

`--without-revision R` analyzes the cluster as it will be once R's release is removed (its webhook
configurations, injector ConfigMap and istiod Service): exit status 0 means nothing breaks.

Left out, as istioctl leaves them out: a message whose object is annotated
`galley.istio.io/analyze-suppress` with its code (a comma-separated list; `*` for every code), and one
a `-S CODE=RESOURCE` matches. The annotation is read on Namespaces, Pods, injector configurations,
StatefulSets, DaemonSets and Jobs, and for a Deployment from the ReplicaSet its controller copies its
annotations to (a kind you may not list is left out: its messages are shown).
`--output-threshold` prints only messages of that level or more severe.

Exit status: 79 (istioctl's "analyzer found issues") when a message of `--failure-threshold` (default
Error) or more severe is found, printed or not, in every output format; 0 otherwise; 1 when the
cluster cannot be read; 2 for bad flags.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from controlplane.kube.client import KubeApi
from controlplane.model import yamltext
from controlplane.ops import common
from controlplane.ops.cluster import (
    INJECT_KEY,
    INJECTION_LABEL,
    REVISION_LABEL,
    ClusterState,
    InjectorConfig,
    Pod,
    Workload,
)
from controlplane.ops.matcher import evaluate, judge_pod, running, selector_matches
from controlplane.settings import IGNORED_NAMESPACES

EXIT_ISSUES = 79
LEVELS = ("Error", "Warning", "Info")  # most severe first
SUPPRESS_ANNOTATION = "galley.istio.io/analyze-suppress"
DOC_URL = "https://istio.io/latest/docs/reference/config/analysis/{code}/"
PROXY_IMAGE_ANNOTATION = "sidecar.istio.io/proxyImage"
FORMATS = ("text", "json", "yaml")


@dataclass(frozen=True, kw_only=True)
class MessageType:
    code: str
    name: str
    level: str


NAMESPACE_NOT_INJECTED = MessageType(code="IST0102", name="NamespaceNotInjected", level="Info")
POD_MISSING_PROXY = MessageType(code="IST0103", name="PodMissingProxy", level="Warning")
MULTIPLE_INJECTION_LABELS = MessageType(code="IST0123", name="NamespaceMultipleInjectionLabels", level="Warning")
INVALID_WEBHOOK = MessageType(code="IST0139", name="InvalidWebhook", level="Error")
PROXY_IMAGE_MISMATCH = MessageType(code="IST0158", name="PodsIstioProxyImageMismatchInNamespace", level="Warning")
NAMESPACE_REVISION_NOT_FOUND = MessageType(code="MP0001", name="NamespaceRevisionNotFound", level="Error")
POD_REVISION_NOT_FOUND = MessageType(code="MP0002", name="PodRevisionNotFound", level="Error")
RESTART_NEEDED = MessageType(code="MP0003", name="RestartNeeded", level="Warning")
SIDECAR_REVISION_NOT_INSTALLED = MessageType(code="MP0004", name="SidecarRevisionNotInstalled", level="Error")
MESSAGE_TYPES = (
    NAMESPACE_NOT_INJECTED,
    POD_MISSING_PROXY,
    MULTIPLE_INJECTION_LABELS,
    INVALID_WEBHOOK,
    PROXY_IMAGE_MISMATCH,
    NAMESPACE_REVISION_NOT_FOUND,
    POD_REVISION_NOT_FOUND,
    RESTART_NEEDED,
    SIDECAR_REVISION_NOT_INSTALLED,
)


@dataclass(frozen=True, kw_only=True)
class Message:
    """One finding about one object (`kind`, `namespace` "" for cluster-scoped ones, `name`)."""

    type: MessageType
    kind: str
    namespace: str
    name: str
    text: str
    command: str | None = None

    @property
    def origin(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def line(self) -> str:
        return f"{self.type.level} [{self.type.code}] ({self.origin}) {self.text}"

    @property
    def resource_names(self) -> tuple[str, ...]:
        """How `--suppress` may name the object: as printed (`Pod shop/web-1`), or as Istio's help
        writes it (`Pod web-1.shop`)."""
        if not self.namespace:
            return (self.origin,)
        return (self.origin, f"{self.kind} {self.name}.{self.namespace}")

    def at_least(self, level: str) -> bool:
        """Whether this message is `level` or more severe."""
        return LEVELS.index(self.type.level) <= LEVELS.index(level)

    def to_dict(self) -> dict[str, str]:
        out = {"code": self.type.code, "level": self.type.level, "origin": self.origin, "message": self.text}
        if self.type.code.startswith("IST"):
            out["documentationUrl"] = DOC_URL.format(code=self.type.code.lower())
        if self.command is not None:
            out["command"] = self.command
        return out

    def sort_key(self) -> tuple[int, str, str, str]:
        return (LEVELS.index(self.type.level), self.type.code, f"{self.kind}/{self.name}/{self.namespace}", self.line())


@dataclass(frozen=True)
class Suppression:
    """`--suppress CODE=RESOURCE`: no message `code` about a resource matching `resource`, where `*`
    stands for any run of characters (istioctl's glob)."""

    code: str
    resource: str

    @classmethod
    def parse(cls, text: str) -> Suppression:
        parts = text.split("=")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not CODE=RESOURCE (e.g. 'IST0102=Namespace frod', 'MP0003=Deployment shop/*')"
            )
        return cls(code=parts[0], resource=parts[1])

    def matches(self, message: Message) -> bool:
        if message.type.code != self.code:
            return False
        pattern = re.compile(".*".join(re.escape(part) for part in self.resource.split("*")), re.DOTALL)
        return any(pattern.fullmatch(name) for name in message.resource_names)


def suppressed(message: Message, annotations: Mapping[str, str], suppressions: Sequence[Suppression] = ()) -> bool:
    """Whether `message` is left out: `annotations`, its object's, list its code (or `*`) in
    `galley.istio.io/analyze-suppress`, or a `--suppress` matches it."""
    listed = {code.strip() for code in annotations.get(SUPPRESS_ANNOTATION, "").split(",")}
    if "*" in listed or message.type.code in listed:
        return True
    return any(s.matches(message) for s in suppressions)


def _annotations(state: ClusterState) -> dict[tuple[str, str, str], Mapping[str, str]]:
    """The annotations of the objects messages are about, as far as they were read, by (kind, namespace,
    name): Namespaces, Pods, injector configurations, and Deployments and ReplicaSets (from ReplicaSets)."""
    found: dict[tuple[str, str, str], Mapping[str, str]] = {
        (workload.kind, workload.namespace, workload.name): annotations
        for workload, annotations in state.owner_annotations.items()
    }
    found.update((("Namespace", "", ns.name), ns.annotations) for ns in state.namespaces)
    found.update((("Pod", pod.namespace, pod.name), pod.annotations) for pod in state.pods)
    found.update((("MutatingWebhookConfiguration", "", c.name), c.annotations) for c in state.injectors)
    return found


def _go_list(items: Sequence[str]) -> str:
    """A list as Go's %v prints it: [a b c]."""
    return "[" + " ".join(items) + "]"


def analyze(
    state: ClusterState, *, istio_namespace: str = "istio-system", suppressions: Sequence[Suppression] = ()
) -> list[Message]:
    """Every message for `state` (see the module docstring) that is not suppressed, sorted as istioctl
    sorts, without duplicates."""
    found = {
        *_namespaces(state, istio_namespace=istio_namespace),
        *_webhooks(state),
        *_pods(state),
    }
    annotations = _annotations(state)
    kept = (m for m in found if not suppressed(m, annotations.get((m.kind, m.namespace, m.name), {}), suppressions))
    return sorted(kept, key=Message.sort_key)


def _in_scope(state: ClusterState, namespace: str) -> bool:
    return state.scope is None or state.scope == namespace


def _installed(state: ClusterState, name: str) -> bool:
    return name in state.revision_names or name in state.tag_names


def _known(state: ClusterState) -> str:
    revisions = ", ".join(sorted(state.revision_names)) or "none"
    tags = ", ".join(sorted(state.tag_names)) or "none"
    return f"installed revisions: {revisions}; tags: {tags}"


def _namespaces(state: ClusterState, *, istio_namespace: str) -> Iterator[Message]:
    for ns in state.namespaces:
        if ns.name == istio_namespace or not _in_scope(state, ns.name):
            continue
        injection, rev = ns.labels.get(INJECTION_LABEL), ns.labels.get(REVISION_LABEL)
        message = functools.partial(Message, kind="Namespace", namespace="", name=ns.name)
        if injection is not None and rev is not None and injection == "enabled":
            labels = [f"{INJECTION_LABEL}={injection}", f"{REVISION_LABEL}={rev}"]
            yield message(
                type=MULTIPLE_INJECTION_LABELS,
                text=f"The namespace has more than one type of injection labels {_go_list(labels)}, which may lead "
                "to undefined behavior. Make sure only one injection label exists.",
            )
        if not injection and rev is None:
            if ns.name not in IGNORED_NAMESPACES:
                yield message(
                    type=NAMESPACE_NOT_INJECTED,
                    text=f"The namespace is not enabled for Istio injection. Run 'kubectl label namespace {ns.name} "
                    f"istio-injection=enabled' to enable it, or 'kubectl label namespace {ns.name} "
                    "istio-injection=disabled' to explicitly mark it as not needing injection.",
                )
        elif injection == "enabled":
            plain = evaluate(state, namespace=ns.name, namespace_labels=ns.labels, pod={"metadata": {}})
            if not plain.firing:
                yield message(
                    type=NAMESPACE_REVISION_NOT_FOUND,
                    text=f"The namespace is labelled {INJECTION_LABEL}=enabled, but no installed revision or tag takes "
                    f"that label ({_known(state)}): its new pods get no sidecar. Install a default revision, run "
                    f"'meshplane tag set default --revision REVISION', or label the namespace "
                    f"'{INJECTION_LABEL}- {REVISION_LABEL}=REVISION'.",
                )
        elif not injection and rev is not None and not _installed(state, rev):
            yield message(
                type=NAMESPACE_REVISION_NOT_FOUND,
                text=f"The namespace is labelled {REVISION_LABEL}={rev}, but no revision or tag {rev} is installed "
                f"({_known(state)}): its new pods get no sidecar. Run 'kubectl label namespace {ns.name} "
                f"{REVISION_LABEL}=REVISION --overwrite' with one of them.",
            )


def _selector_revisions(config: InjectorConfig) -> set[str]:
    """`istio.io/rev` values a configuration names: its label and its selectors' (tags included)."""
    found = {config.revision}
    for hook in config.webhooks:
        for selector in (hook.namespace_selector, hook.object_selector):
            if not selector:
                continue
            match_labels = selector.get("matchLabels")
            if isinstance(match_labels, Mapping) and isinstance(match_labels.get(REVISION_LABEL), str):
                found.add(match_labels[REVISION_LABEL])
            for term in selector.get("matchExpressions") or []:
                if isinstance(term, Mapping) and term.get("key") == REVISION_LABEL:
                    found.update(v for v in term.get("values") or [] if isinstance(v, str))
    return found


def _probe_labels(revisions: set[str], base: list[dict[str, str]]) -> list[dict[str, str]]:
    return base + [{**labels, REVISION_LABEL: rev} for rev in sorted(revisions) for labels in base]


def _webhooks(state: ClusterState) -> Iterator[Message]:
    revisions = set().union(*(_selector_revisions(c) for c in state.injectors)) if state.injectors else set()
    namespace_probes = _probe_labels(
        revisions, [{}, {INJECTION_LABEL: "enabled"}, {INJECTION_LABEL: "disabled"}]
    )  # fmt: skip
    object_probes = _probe_labels(revisions, [{}, {INJECT_KEY: "true"}, {INJECT_KEY: "false"}])
    hooks = [(config, hook) for config in state.injectors for hook in config.webhooks]
    for ns_labels, pod_labels in itertools.product(namespace_probes, object_probes):
        matched = {
            f"{config.name}/{hook.name}": config
            for config, hook in hooks
            if selector_matches(hook.namespace_selector, ns_labels)
            and selector_matches(hook.object_selector, pod_labels)
        }
        if len(matched) < 2:
            continue
        for key, config in matched.items():
            others = sorted(k for k in matched if k != key)
            yield Message(
                type=INVALID_WEBHOOK,
                kind="MutatingWebhookConfiguration",
                namespace="",
                name=config.name,
                text=f"Webhook overlaps with others: {_go_list(others)}. This may cause injection to occur twice.",
            )
    for config, hook in hooks:
        if hook.service is not None and hook.service not in state.services:
            yield Message(
                type=INVALID_WEBHOOK,
                kind="MutatingWebhookConfiguration",
                namespace="",
                name=config.name,
                text=f"Injector refers to a control plane service that does not exist: {'/'.join(hook.service)}.",
            )


def _pods(state: ClusterState) -> Iterator[Message]:
    mismatched: dict[str, list[str]] = {}
    restarts: dict[Workload, list[tuple[Pod, str | None]]] = {}
    orphans: dict[Workload, list[tuple[Pod, str | None]]] = {}
    targets: dict[Workload, str | None] = {}
    for pod in state.pods:
        if not _in_scope(state, pod.namespace):
            continue
        ns = state.namespace(pod.namespace)
        verdict = judge_pod(state, pod)
        want = verdict.want
        if want is not None and pod.proxy_image is None:
            yield Message(
                type=POD_MISSING_PROXY,
                kind="Pod",
                namespace=pod.namespace,
                name=pod.name,
                text=f"The pod {pod.namespace}/{pod.name} is missing the Istio proxy. This can often be resolved "
                "by restarting or redeploying the workload.",
            )
        pod_rev = pod.labels.get(REVISION_LABEL)
        ns_asks = INJECTION_LABEL in ns.labels or REVISION_LABEL in ns.labels
        if pod_rev and not ns_asks and not pod.injection_disabled and not _installed(state, pod_rev):
            yield Message(
                type=POD_REVISION_NOT_FOUND,
                kind="Pod",
                namespace=pod.namespace,
                name=pod.name,
                text=f"The pod is labelled {REVISION_LABEL}={pod_rev}, but no revision or tag {pod_rev} is installed "
                f"({_known(state)}): it gets no sidecar when it is created again. Change the label in its "
                "workload's pod template.",
            )
        expected = state.proxy_image(want) if want is not None else None
        if (
            expected is not None
            and pod.proxy_image is not None
            and pod.proxy_image != expected
            and not pod.annotations.get(PROXY_IMAGE_ANNOTATION)
        ):
            mismatched.setdefault(pod.namespace, []).append(pod.name)
        if verdict.have is not None and verdict.have not in state.revision_names and running(pod):
            orphans.setdefault(pod.owner, []).append((pod, verdict.have))  # its control plane is gone
        elif verdict.needs_restart:
            restarts.setdefault(pod.owner, []).append((pod, verdict.have))
        else:
            continue
        targets[pod.owner] = want
    for namespace, names in mismatched.items():
        yield Message(
            type=PROXY_IMAGE_MISMATCH,
            kind="Namespace",
            namespace="",
            name=namespace,
            text="The Istio proxy images of the pods running in the namespace do not match the image defined in "
            f"the injection configuration (pod names: {_go_list(sorted(names))}). This often happens after "
            "upgrading the Istio control-plane and can be fixed by redeploying the pods.",
        )
    for workload, pods in restarts.items():
        yield _restart(workload, pods, targets[workload], on_delete=workload in state.on_delete)
    for workload, pods in orphans.items():
        want = targets[workload]
        installed = want in state.revision_names
        yield _restart(
            workload, pods, want, not_installed=True, want_installed=installed, on_delete=workload in state.on_delete
        )


def _restart(
    workload: Workload,
    pods: list[tuple[Pod, str | None]],
    want: str | None,
    *,
    not_installed: bool = False,
    want_installed: bool = True,
    on_delete: bool = False,
) -> Message:
    """One MP0003 message for the pods of `workload` that need a restart to get revision `want`; with
    `not_installed`, one MP0004 for pods whose sidecar's revision is not installed any more."""
    parts = []
    by_have: dict[str | None, list[str]] = {}
    for pod, have in pods:
        by_have.setdefault(have, []).append(pod.name)
    for have, unsorted in sorted(by_have.items(), key=lambda item: (item[0] is None, item[0] or "")):
        names = sorted(unsorted)
        plural = len(names) > 1
        subject = f"{'Pods' if plural else 'Pod'} {', '.join(names)}"
        what = f"the sidecar of revision {have}" if have is not None else "no sidecar"
        gone = ", which is not installed" if not_installed else ""
        parts.append(f"{subject} {'run' if plural else 'runs'} {what}{gone}")
    described = "; ".join(parts)
    target = f"revision {want}" if want is not None else "no injection (a restart removes the sidecar)"
    if want is not None and not want_installed:
        target += ", which is not installed either: label the namespace with an installed revision first"
    debugged = any(pod.debugged for pod, _ in pods)  # replaced, such a pod would be deleted and not created
    reinjected = want is not None and want_installed and not debugged
    command = workload.restart_command([pod.name for pod, _ in pods], reinjected=reinjected, on_delete=on_delete)
    whose = "their" if len(pods) > 1 else "its"
    if not_installed:
        described += (
            f": {whose} {'proxies get' if len(pods) > 1 else 'proxy gets'} no configuration and no new certificates"
        )
    text = f"{described}; {whose} namespace and labels now select {target}. Restart: {command}"
    if on_delete:
        text += (
            " (its update strategy is OnDelete: a rollout restart would replace no pod;"
            f" the {workload.kind} creates deleted pods again)"
        )
    if workload.kind == "Pod" and reinjected:
        text += " (it deletes the pod and creates it again from its own spec, which the injector injects anew)"
    elif workload.kind == "Pod" and debugged:
        text += (
            " (a bare pod is not recreated: create it again from its manifest; kubectl replace --force would delete"
            " it and then fail, as no new pod may carry its ephemeral containers)"
        )
    elif workload.kind == "Pod":
        text += " (a bare pod is not recreated: create it again from its manifest)"
    return Message(
        type=SIDECAR_REVISION_NOT_INSTALLED if not_installed else RESTART_NEEDED,
        kind=workload.kind,
        namespace=workload.namespace,
        name=workload.name,
        text=text,
        command=command,
    )


def render(messages: Sequence[Message], *, output: str) -> str:
    """The messages as istioctl prints them: log lines, or a JSON (tab-indented) / YAML list."""
    if output == "json":
        return json.dumps([m.to_dict() for m in messages], indent="\t", sort_keys=True)
    if output == "yaml":
        return yaml.dump([m.to_dict() for m in messages], Dumper=yamltext.YamlDumper, sort_keys=True, width=1 << 16)
    return "\n".join(m.line() for m in messages)


def exit_status(messages: Sequence[Message], *, failure_threshold: str = "Error") -> int:
    return EXIT_ISSUES if any(m.at_least(failure_threshold) for m in messages) else 0


def _level(text: str) -> str:
    """A level named in any case (istioctl's thresholds take `warning` as `Warning`)."""
    for level in LEVELS:
        if text.lower() == level.lower():
            return level
    raise argparse.ArgumentTypeError(f"{text!r} is not a level: use one of Info, Warning, Error")


# -- command ------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "analyze",
        help="find injection problems and the workloads to restart",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="namespace to analyze [default: the kubeconfig context's]")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="analyze every namespace")
    p.add_argument("-o", "--output", choices=FORMATS, default="text", help="output format [default: text]")
    p.add_argument(
        "-S",
        "--suppress",
        action="append",
        default=[],
        type=Suppression.parse,
        metavar="CODE=RESOURCE",
        help="leave out messages CODE about RESOURCE, named as printed ('Pod shop/web-1') or as istioctl's help "
        "writes it ('Pod web-1.shop'); '*' matches any run of characters ('MP0003=Deployment shop/*'); repeatable",
    )
    p.add_argument(
        "--failure-threshold",
        type=_level,
        default="Error",
        metavar="LEVEL",
        help="the least severe level that makes the exit status 79: Info, Warning or Error [default: Error]",
    )
    p.add_argument(
        "--output-threshold",
        type=_level,
        default="Info",
        metavar="LEVEL",
        help="the least severe level printed: Info, Warning or Error [default: Info]",
    )
    p.add_argument(
        "--without-revision",
        metavar="REVISION",
        help="analyze the cluster as it will be once REVISION is removed (its webhooks, injector ConfigMap and "
        "istiod Service): exit status 0 means nothing breaks",
    )
    common.add_istio_namespace_flag(p)
    common.add_connection_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    namespace = None if args.all_namespaces else args.namespace or common.current_namespace(args)

    known = {t.code for t in MESSAGE_TYPES}
    for code in sorted({s.code for s in args.suppress} - known):
        print(
            f"meshplane analyze: warning: supplied message code '{code}' is an unknown message code and will not "
            f"have any effect (codes: {', '.join(sorted(known))})",
            file=sys.stderr,
        )

    async def body(api: KubeApi) -> int:
        state = await common.read_or_fail(api, namespace=namespace)
        if args.without_revision is not None:
            removed = args.without_revision
            if removed not in state.revision_names:
                raise common.CommandError(
                    f"--without-revision: revision {removed!r} is not installed ({_known(state)})"
                )
            state = state.without_revision(removed)
        messages = analyze(state, istio_namespace=args.istio_namespace, suppressions=args.suppress)
        shown = [m for m in messages if m.at_least(args.output_threshold)]
        text = render(shown, output=args.output)
        if text:
            print(text.rstrip("\n"))
        if not shown and args.output == "text":
            target = "all namespaces" if namespace is None else f"namespace: {namespace}"
            if args.without_revision is not None:
                target += f", without revision {args.without_revision}"
            print(f"\u2714 No validation issues found when analyzing {target}.", file=sys.stderr)
        return exit_status(messages, failure_threshold=args.failure_threshold)

    return common.run_against_cluster("meshplane analyze", args, body)
