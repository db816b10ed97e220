"""`meshplane inject`: add the sidecar to Kubernetes manifests offline (like `istioctl kube-inject`).

    meshplane inject -f FILE|- [-o FILE] [--revision R] [--namespace NS] [--injection-config FILE]

Reads multi-document YAML as kubectl reads it (cut at every line that begins with `---`, the first YAML
document of each piece) and injects the pod template of every Deployment, StatefulSet, DaemonSet,
ReplicaSet, ReplicationController, OpenShift DeploymentConfig, Job and CronJob
(`spec.jobTemplate.spec.template`), every Pod, and the items of every list (any document with
`items`: `List`, `PodList`, ...). Other documents, and workloads the policy leaves alone
(`sidecar.istio.io/inject: "false"`, hostNetwork, a never-inject selector, a system namespace), pass
through byte for byte, each named on stderr with the reason; injected documents are re-serialised.
A file kubectl would refuse to read as objects (a separator line with more than a comment after its
`---`, a document that is not an object or has no kind) is refused. The injection itself is the
webhook's: `webhook.policy` then `webhook.inject.inject_pod`, with the workload name and owner taken
from the enclosing object. The policy's enabled/disabled setting is not consulted: asking to inject
is the opt-in.

`--injection-config FILE` holds the injector ConfigMap (`istio-sidecar-injector[-<rev>]`) and
optionally the mesh ConfigMap (`istio[-<rev>]`), as YAML documents; without it the defaults apply.

Errors (unreadable input, invalid YAML, a document kubectl could not read, an invalid annotation, a
malformed workload, a bad injection config) print one message naming the document, and for
annotations the annotation and the value, and exit 1. Output is all or nothing: `-o FILE` is
replaced only after every document was injected.
"""

from __future__ import annotations

import argparse
import copy
import os
import pathlib
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from controlplane.model import yamltext
from controlplane.settings import DEFAULT_REVISION, revision_suffix
from webhook.config import ConfigError, InjectionConfig
from webhook.configparse import parse_injection_config
from webhook.inject import InjectionError, InjectionParams, InvalidPod, inject_pod
from webhook.policy import injection_required
from webhook.validate import type_name

# kind -> path of the pod template inside the object
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "ReplicationController": ("spec", "template"),
    "DeploymentConfig": ("spec", "template"),  # OpenShift's (apps.openshift.io/v1), injected by Istio too
}
_REVISION = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class InjectCommandError(Exception):
    """A document could not be injected. `where` names it, `cause` says why."""

    def __init__(self, *, where: str, cause: str) -> None:
        super().__init__(f"{where}: {cause}")
        self.where = where
        self.cause = cause


@dataclass(frozen=True, kw_only=True)
class OfflineSettings:
    """The control plane the manifests are injected for (the webhook gets these from `serve`)."""

    revision: str = DEFAULT_REVISION
    namespace: str = "istio-system"  # the control plane's namespace
    trust_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    config: InjectionConfig = field(default_factory=InjectionConfig)

    @property
    def discovery_address(self) -> str:
        return f"istiod{revision_suffix(self.revision)}.{self.namespace}.svc:15012"


@dataclass(frozen=True)
class InjectOutput:
    text: str
    notes: tuple[str, ...]  # one line per workload left alone and why, or per warning about an injected one


# -- YAML in and out ---------------------------------------------------------------------------


class _Dumper(yamltext.YamlDumper):
    pass


def _represent_str(dumper: yamltext.YamlDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(doc: Any) -> str:
    """How injected documents are written: block style, keys in their original order."""
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096)


def _preamble(piece: str) -> str:
    """The `---` line and the comment lines that open a document, kept when it is re-serialised."""
    kept: list[str] = []
    for index, line in enumerate(yamltext.LINE.findall(piece)):
        stripped = line.strip(yamltext.GO_SPACE)
        if (index == 0 and line.startswith("---")) or not stripped or stripped.startswith("#"):
            kept.append(line)
        else:
            break
    return "".join(kept)


# a document end marker (`...`) followed, past blank and comment lines, by more text: a second YAML document in
# the piece, which kubectl does not read
_END_THEN_TEXT = re.compile(r"^\.\.\.(?:[ \t][^\n]*)?\r?\n(?:[ \t]*(?:#[^\n]*)?\r?\n)*[ \t]*[^\s#]", re.MULTILINE)


# -- injection ---------------------------------------------------------------------------------


def _describe(doc: Mapping[str, Any], kind: str) -> tuple[str, str, str]:
    meta = doc.get("metadata") or {}
    name = meta.get("name") or meta.get("generateName") or "(unnamed)"
    return kind, meta.get("namespace") or "default", name


# kinds without a namespace that manifests often hold, named without one in notes
_CLUSTER_SCOPED = frozenset(
    (
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "PriorityClass",
        "StorageClass",
        "PersistentVolume",
        "IngressClass",
    )
)
_OBJECT_META_STRINGS = ("name", "generateName", "namespace", "uid", "resourceVersion")


def object_problem(doc: Any, *, item: bool = False) -> str | None:
    """Why kubectl would not read `doc` as an object (nor, then, the file), or None (`null` is no document).

    As its unstructured decoder reads it: a mapping whose `items`, when set, make it a list of such mappings
    (none a list itself), with a `kind` (a list item may take its list's) and a string `apiVersion`; then, as
    `metav1.ObjectMeta` types them, metadata's names are strings, and labels and annotations map to strings
    (ObjectMeta's other fields are not checked here)."""
    if not isinstance(doc, dict):
        return f"a YAML {type_name(doc)}, not a Kubernetes object"
    for key in ("apiVersion", "kind"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            return f"{key}: must be a string, got {type_name(doc[key])}"
    items = doc.get("items")
    if items is not None:
        if item:
            return "items: a list item cannot be a list itself"
        if not isinstance(items, list):
            return f"items: must be a list, got {type_name(items)}"
        for index, entry in enumerate(items):
            problem = object_problem({} if entry is None else entry, item=True)  # null reads as {}
            if problem is not None:
                return f"items[{index}]: {problem}"
    if not doc.get("kind") and not item:
        return "kind: is required"
    meta = doc.get("metadata")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        return f"metadata: must be an object, got {type_name(meta)}"
    for key in _OBJECT_META_STRINGS:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            return f"metadata.{key}: must be a string, got {type_name(meta[key])}"
    for key in ("labels", "annotations"):
        entries = meta.get(key)
        if entries is not None and not isinstance(entries, dict):
            return f"metadata.{key}: must be an object, got {type_name(entries)}"
        for name, value in (entries or {}).items():
            if value is not None and not isinstance(value, str):
                return f"metadata.{key}.{name}: must be a string, got {type_name(value)}"
    return None


class _Injector:
    def __init__(self, settings: OfflineSettings) -> None:
        self.settings = settings
        self.notes: list[str] = []

    def params(self, namespace: str, *, workload: tuple[str, str, str] | None) -> InjectionParams:
        s = self.settings
        name, kind, api_version = workload or ("", "", "")
        return InjectionParams(
            revision=s.revision,
            namespace=namespace,
            config=s.config,
            discovery_address=s.discovery_address,
            trust_domain=s.trust_domain,
            cluster_id=s.cluster_id,
            workload_name=name,
            workload_kind=kind,
            workload_api_version=api_version,
        )

    def document(self, doc: Any, where: str) -> Any | None:
        """The injected document, or None when it stays as it is (a note then says why).

        A document kubectl would refuse to read as an object is refused (`object_problem`). One with `items`
        is a list to kubectl whatever its kind (`kind: List`, `PodList`, ...): its items are injected, and an
        item with neither kind nor apiVersion is of the list's kind without `List`, as kubectl reads it."""
        problem = object_problem(doc)
        if problem is not None:
            raise InjectCommandError(where=where, cause=f"{problem}: kubectl cannot read it as an object")
        if doc.get("items") is None:
            return self.object(doc, doc["kind"], where)
        label = f"{where} ({doc['kind']})"
        changed = False
        new_items = []
        for index, entry in enumerate(doc["items"]):
            item_where = f"{label} item {index + 1}"
            item = entry or {}
            kind = yamltext.listed_kind(doc, item)
            if not kind:
                raise InjectCommandError(
                    where=item_where, cause="kind: is required: kubectl cannot read it as an object"
                )
            result = self.object(item, kind, item_where)
            changed = changed or result is not None
            new_items.append(entry if result is None else result)
        return {**doc, "items": new_items} if changed else None

    def object(self, doc: dict[str, Any], kind: str, where: str) -> Any | None:
        """One object of `kind` injected, or None when it stays as it is (a note then says why)."""
        if kind == "Pod":
            return self.pod(doc, where)
        if kind in TEMPLATE_PATHS:
            return self.workload(doc, kind, where)
        _, namespace, name = _describe(doc, kind)
        article = "an" if kind[:1] in "AEIOU" else "a"
        shown = (
            name
            if kind in _CLUSTER_SCOPED and "namespace" not in (doc.get("metadata") or {})
            else f"{namespace}/{name}"
        )
        self.notes.append(f"{where} ({kind} {shown}): passed through: {article} {kind} has no pod to inject")
        return None

    def _inject(self, pod: dict[str, Any], *, namespace: str, label: str, prefix: str, params: InjectionParams) -> bool:
        try:
            decision = injection_required(pod, namespace=namespace, config=self.settings.config, offline=True)
            if not decision.inject:
                self.notes.append(f"{label}: not injected: {decision.reason}")
                return False
            warnings: list[str] = []
            inject_pod(pod, params, warnings=warnings)
            self.notes.extend(f"{label}: warning: {warning}" for warning in warnings)
        except InjectionError as exc:
            raise InjectCommandError(where=label, cause=str(exc)) from None
        except InvalidPod as exc:
            raise InjectCommandError(where=label, cause=f"{prefix}{exc}") from None
        return True

    def pod(self, doc: dict[str, Any], where: str) -> dict[str, Any] | None:
        kind, namespace, name = _describe(doc, "Pod")
        label = f"{where} ({kind} {namespace}/{name})"
        pod = copy.deepcopy(doc)
        if not isinstance(pod.get("spec"), dict):
            raise InjectCommandError(where=label, cause="spec: is required and must be an object")
        injected = self._inject(
            pod, namespace=namespace, label=label, prefix="", params=self.params(namespace, workload=None)
        )
        return pod if injected else None

    def workload(self, doc: dict[str, Any], kind: str, where: str) -> dict[str, Any] | None:
        _, namespace, name = _describe(doc, kind)
        label = f"{where} ({kind} {namespace}/{name})"
        path = TEMPLATE_PATHS[kind]
        node: Any = doc
        for depth, key in enumerate(path):
            node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise InjectCommandError(
                    where=label, cause=f"{'.'.join(path[: depth + 1])}: is required and must be an object"
                )
        template: dict[str, Any] = node
        if not isinstance(template.get("spec"), dict):
            raise InjectCommandError(where=label, cause=f"{'.'.join(path)}.spec: is required and must be an object")
        meta = template.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise InjectCommandError(where=label, cause=f"{'.'.join(path)}.metadata: must be an object")
        pod = {"metadata": copy.deepcopy(meta or {}), "spec": copy.deepcopy(template["spec"])}
        workload = (name, kind, str(doc.get("apiVersion") or ""))
        params = self.params(namespace, workload=workload)
        if not self._inject(pod, namespace=namespace, label=label, prefix=".".join(path) + ".", params=params):
            return None
        replaced = {
            key: pod.get(key, value) if key in ("metadata", "spec") else value for key, value in template.items()
        }
        new_template = replaced if "metadata" in template else {"metadata": pod["metadata"], **replaced}
        result = copy.deepcopy(doc)
        parent = result
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = new_template
        return result


def inject_manifests(text: str, *, settings: OfflineSettings) -> InjectOutput:
    """Inject every workload in the multi-document YAML `text`, cut and read as kubectl reads it. Raises
    `InjectCommandError`."""
    injector = _Injector(settings)
    out: list[str] = []
    number = 0
    try:
        pieces = yamltext.kubectl_pieces(text)
    except yaml.MarkedYAMLError as exc:  # a separator line kubectl refuses
        where = f"line {exc.problem_mark.line + 1}" if exc.problem_mark is not None else "input"
        raise InjectCommandError(where=where, cause=str(exc.problem)) from None
    for piece in pieces:
        out.append(piece.separator)
        try:
            doc = yamltext.first_document(piece)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" near line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise InjectCommandError(where=f"document {number + 1}", cause=f"not valid YAML{at}: {problem}") from None
        if doc is None:
            out.append(piece.text)
            continue
        number += 1
        where = f"document {number}"
        ignored = _END_THEN_TEXT.search(piece.text)
        if ignored is not None:
            line = piece.line + piece.text.count("\n", 0, ignored.start())
            injector.notes.append(
                f"{where}: the text after the document end (... on line {line}) is not read, by kubectl either"
            )
        injected = injector.document(doc, where)
        out.append(piece.text if injected is None else _preamble(piece.text) + dump_yaml(injected))
    if number == 0:
        raise InjectCommandError(where="input", cause="holds no YAML document (empty, or only comments)")
    return InjectOutput(text="".join(out), notes=tuple(injector.notes))


# -- the injection config file -----------------------------------------------------------------


def load_injection_config(text: str, *, source: str) -> InjectionConfig:
    """Parse a YAML file of ConfigMaps: the injector one (`istio-sidecar-injector*`) and optionally
    the mesh one (`istio` or `istio-<rev>`). Raises `InjectCommandError` naming the problem."""
    try:
        docs = [doc for doc in yamltext.kubectl_documents(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise InjectCommandError(where=source, cause=f"not valid YAML: {exc}") from None
    found: dict[str, tuple[str, Mapping[str, str] | None]] = {}
    items: list[Any] = []
    for doc in docs:  # a list's items (`kubectl get cm -o yaml` of several; a ConfigMapList's are ConfigMaps)
        listed = doc.get("items") if isinstance(doc, dict) else None
        if isinstance(listed, list):
            items.extend(
                {**item, "kind": yamltext.listed_kind(doc, item)} if isinstance(item, dict) else item for item in listed
            )
        else:
            items.append(doc)
    for index, doc in enumerate(items):
        if not isinstance(doc, dict) or doc.get("kind") != "ConfigMap":
            raise InjectCommandError(where=f"{source} document {index + 1}", cause="must be a ConfigMap")
        name = str((doc.get("metadata") or {}).get("name") or "")
        role = (
            "injector"
            if name.startswith("istio-sidecar-injector")
            else "mesh"
            if name == "istio" or name.startswith("istio-")
            else ""
        )
        if not role:
            raise InjectCommandError(
                where=f"{source} ConfigMap {name!r}",
                cause="is neither the injector ConfigMap (istio-sidecar-injector[-<rev>]) "
                "nor the mesh one (istio[-<rev>])",
            )
        if role in found:
            raise InjectCommandError(
                where=f"{source} ConfigMap {name!r}", cause=f"a second {role} ConfigMap (first: {found[role][0]!r})"
            )
        data = doc.get("data")
        if data is not None and not isinstance(data, dict):
            raise InjectCommandError(where=f"{source} ConfigMap {name!r}", cause="data must be a map of strings")
        found[role] = (name, data)
    if "injector" not in found and "mesh" not in found:
        raise InjectCommandError(where=source, cause="holds no ConfigMap")
    try:
        return parse_injection_config(
            injector=found["injector"][1] if "injector" in found else None,
            mesh=found["mesh"][1] if "mesh" in found else None,
        )
    except ConfigError as exc:
        name = found["mesh" if exc.key in ("mesh", "meshNetworks") else "injector"][0]
        raise InjectCommandError(where=f"{source} ConfigMap {name!r}", cause=str(exc)) from None


# -- command line ------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "inject",
        help="inject the sidecar into Kubernetes manifests (offline)",
        description=(
            "Inject the sidecar into the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, "
            "Jobs, CronJobs, Pods and lists (List, PodList, ...) in multi-document YAML, read as kubectl reads "
            "it; other documents pass through unchanged. Exits 1, writing nothing, if any document cannot be "
            "injected or kubectl could not read the file."
        ),
    )
    p.add_argument("-f", "--filename", required=True, help="manifest file to read, or - for standard input")
    p.add_argument("-o", "--output", help="file to write (replaced only on success); standard output if omitted")
    p.add_argument("--revision", default=DEFAULT_REVISION, help="control plane revision to inject for [default]")
    p.add_argument("--namespace", default="istio-system", help="namespace of the control plane [istio-system]")
    p.add_argument("--trust-domain", default="cluster.local", help="SPIFFE trust domain [cluster.local]")
    p.add_argument("--cluster-id", default="Kubernetes", help="cluster id given to the proxies [Kubernetes]")
    p.add_argument(
        "--injection-config",
        help="YAML file with the injector ConfigMap (istio-sidecar-injector[-<rev>]) and optionally the mesh one",
    )
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"meshplane inject: {message}", file=sys.stderr)
    return 1


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    return pathlib.Path(path).read_text(encoding="utf-8")


def _write_atomically(path: pathlib.Path, text: str) -> None:
    directory = path.parent if str(path.parent) else pathlib.Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    """The `inject` subcommand: 0 on success, 1 on any error (message on stderr)."""
    if not _REVISION.fullmatch(args.revision):
        return _fail(f"--revision: {args.revision!r} must be lowercase letters, digits and '-'")
    source = "standard input" if args.filename == "-" else args.filename
    try:
        text = _read(args.filename)
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}")
    config = InjectionConfig()
    if args.injection_config:
        try:
            config_text = pathlib.Path(args.injection_config).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return _fail(f"cannot read {args.injection_config}: {getattr(exc, 'strerror', None) or exc}")
        try:
            config = load_injection_config(config_text, source=args.injection_config)
        except InjectCommandError as exc:
            return _fail(str(exc))
    settings = OfflineSettings(
        revision=args.revision,
        namespace=args.namespace,
        trust_domain=args.trust_domain,
        cluster_id=args.cluster_id,
        config=config,
    )
    try:
        result = inject_manifests(text, settings=settings)
    except InjectCommandError as exc:
        return _fail(f"{source}: {exc}")
    for note in result.notes:
        print(f"meshplane inject: {source}: {note}", file=sys.stderr)
    if args.output:
        try:
            _write_atomically(pathlib.Path(args.output), result.text)
        except OSError as exc:
            return _fail(f"cannot write {args.output}: {exc.strerror or exc}")
    else:
        sys.stdout.write(result.text)
        sys.stdout.flush()
    return 0
