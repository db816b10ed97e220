"""The golden injection cases, shared by the offline golden test and the HTTPS webhook replay.

Each case is `testdata/<name>.yaml` (input manifests) with `testdata/<name>.yaml.injected` (the
expected output of `meshplane inject` with `SETTINGS`). A golden that starts with `error: ` holds
the expected error message instead; such a case has exactly one document. A case may come with
`testdata/<name>.yaml.config`: the injector ConfigMap (as `meshplane inject --injection-config`
reads it) that the offline run and the webhook both use.

Replaying a case through the webhook (`admissions(case)`): every workload in the input becomes one
pod to admit, in the document's namespace (default `default`), and the expected result is built
from the golden the same way, so both sides agree on the workload identity:
- a Pod document is admitted as it is;
- a pod template becomes a Pod the way its controller would create it: the template's metadata
  and spec plus `namespace`, a controller `ownerReference` and a name or generateName:
    Deployment  -> ReplicaSet `<name>-<REPLICASET_HASH>` and label `pod-template-hash`;
    StatefulSet -> StatefulSet `<name>`, pod name `<name>-0`;
    DaemonSet, ReplicaSet, Job -> that object;
    CronJob     -> Job `<name>-<CRONJOB_MINUTE>` (a scheduled Job).
  From those the webhook derives the same workload name and owner as `meshplane inject` takes from
  the enclosing object. Injection reads none of the other added fields.
`Admission.expected` is the pod the webhook's patch must produce (the input pod itself when the
policy skips it); `Admission.error`, when set, is the rejection message (`status.message` of an
`allowed: false` answer): the golden's message without its document prefix, and for a malformed
pod template with field paths relative to the pod (`spec.containers[0]...`, not
`spec.template.spec.containers[0]...`).
The webhook must run with the defaults of `SETTINGS`: revision `default`, namespace
`istio-system`, trust domain `cluster.local`, cluster id `Kubernetes`, and no injection ConfigMaps
other than the case's own.
"""

from __future__ import annotations

import copy
import pathlib
import re
from dataclasses import dataclass
from typing import Any

import yaml

from controlplane.injectcmd import (
    TEMPLATE_PATHS,
    InjectCommandError,
    OfflineSettings,
    inject_manifests,
    load_injection_config,
)

TESTDATA = pathlib.Path(__file__).parent / "testdata"
GOLDEN_SUFFIX = ".injected"
CONFIG_SUFFIX = ".config"
ERROR_PREFIX = "error: "
SETTINGS = OfflineSettings()  # revision default, control plane in istio-system
REPLICASET_HASH = "7c9f8b6d5"
CRONJOB_MINUTE = "28912345"
_ERROR = re.compile(r"^document \d+(?: \(List\) item \d+)? \([^)]*\): (?P<cause>.*)$", re.DOTALL)


@dataclass(frozen=True)
class GoldenCase:
    name: str
    input: pathlib.Path
    golden: pathlib.Path

    def __str__(self) -> str:
        return self.name

    @property
    def config(self) -> pathlib.Path | None:
        """The case's injector ConfigMap file, if it has one."""
        path = self.input.with_name(self.input.name + CONFIG_SUFFIX)
        return path if path.exists() else None

    def configmap(self) -> dict[str, Any] | None:
        """The case's injector ConfigMap object, if it has one."""
        return yaml.safe_load(self.config.read_text(encoding="utf-8")) if self.config else None

    def settings(self) -> OfflineSettings:
        if self.config is None:
            return SETTINGS
        config = load_injection_config(self.config.read_text(encoding="utf-8"), source=self.config.name)
        return OfflineSettings(config=config)


@dataclass(frozen=True)
class Admission:
    case: str
    document: str  # e.g. "document 2 (Deployment shop/reviews)"
    namespace: str
    pod: dict[str, Any]
    expected: dict[str, Any] | None  # None when the pod is rejected
    error: str | None  # the rejection message, when rejected


def cases() -> list[GoldenCase]:
    """Every `testdata/*.yaml`, sorted by name."""
    return [
        GoldenCase(path.name.removesuffix(".yaml"), path, path.with_name(path.name + GOLDEN_SUFFIX))
        for path in sorted(TESTDATA.glob("*.yaml"))
    ]


def orphaned_goldens() -> list[pathlib.Path]:
    """Goldens whose input is gone (stale files that no test would check)."""
    return [
        path
        for path in sorted(TESTDATA.glob(f"*{GOLDEN_SUFFIX}"))
        if not path.with_name(path.name.removesuffix(GOLDEN_SUFFIX)).exists()
    ]


def render(text: str, settings: OfflineSettings = SETTINGS) -> str:
    """What the golden of input `text` holds: the injected manifests, or `error: <message>`."""
    try:
        return inject_manifests(text, settings=settings).text
    except InjectCommandError as exc:
        return f"{ERROR_PREFIX}{exc}\n"


def golden_error(golden_text: str) -> str | None:
    """The error message a golden expects, or None for an injection golden."""
    if not golden_text.startswith(ERROR_PREFIX):
        return None
    return golden_text.removeprefix(ERROR_PREFIX).rstrip("\n")


def _workloads(docs: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, document) of every Pod and pod-template workload, Lists flattened, in order."""
    out: list[tuple[str, dict[str, Any]]] = []
    for number, doc in enumerate(docs, start=1):
        items = doc.get("items", []) if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
        for item in items:
            if isinstance(item, dict) and (item.get("kind") == "Pod" or item.get("kind") in TEMPLATE_PATHS):
                meta = item.get("metadata") or {}
                out.append((f"document {number} ({item['kind']} {meta.get('name')})", item))
    return out


def _namespace(doc: dict[str, Any]) -> str:
    return str((doc.get("metadata") or {}).get("namespace") or "default")


def replay_pod(doc: dict[str, Any]) -> dict[str, Any]:
    """The Pod the API server would send the webhook for this workload document (see module doc)."""
    kind = doc["kind"]
    if kind == "Pod":
        return copy.deepcopy(doc)
    template: Any = doc
    for key in TEMPLATE_PATHS[kind]:
        template = template[key]
    name = doc["metadata"]["name"]
    namespace = _namespace(doc)
    meta = copy.deepcopy(template.get("metadata") or {})
    meta["namespace"] = namespace
    labels = meta.setdefault("labels", {})
    owner_api, owner_kind, owner_name = str(doc.get("apiVersion")), kind, name
    if kind == "Deployment":
        owner_api, owner_kind, owner_name = "apps/v1", "ReplicaSet", f"{name}-{REPLICASET_HASH}"
        labels["pod-template-hash"] = REPLICASET_HASH
    elif kind == "CronJob":
        owner_api, owner_kind, owner_name = "batch/v1", "Job", f"{name}-{CRONJOB_MINUTE}"
    if kind == "StatefulSet":
        meta["name"] = f"{name}-0"
    else:
        meta["generateName"] = f"{owner_name}-"
    meta["ownerReferences"] = [
        {
            "apiVersion": owner_api,
            "kind": owner_kind,
            "name": owner_name,
            "uid": "00000000-0000-4000-8000-000000000001",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template["spec"])}


def admissions(case: GoldenCase) -> list[Admission]:
    """The pods to admit for this case and what the webhook must answer for each."""
    inputs = [doc for doc in yaml.safe_load_all(case.input.read_text(encoding="utf-8")) if doc is not None]
    golden_text = case.golden.read_text(encoding="utf-8")
    error = golden_error(golden_text)
    workloads = _workloads(inputs)
    if error is not None:
        if len(workloads) != 1:
            raise AssertionError(f"{case}: an error case must hold exactly one workload")
        match = _ERROR.match(error)
        if match is None:
            raise AssertionError(f"{case}: cannot find the message in the golden error {error!r}")
        label, doc = workloads[0]
        cause = match["cause"]
        if doc["kind"] in TEMPLATE_PATHS:  # field paths are relative to the pod in the webhook
            cause = cause.removeprefix(".".join(TEMPLATE_PATHS[doc["kind"]]) + ".")
        return [Admission(case.name, label, _namespace(doc), replay_pod(doc), None, cause)]
    outputs = _workloads([doc for doc in yaml.safe_load_all(golden_text) if doc is not None])
    if len(outputs) != len(workloads):
        raise AssertionError(f"{case}: golden has {len(outputs)} workloads, input {len(workloads)}")
    return [
        Admission(case.name, label, _namespace(doc), replay_pod(doc), replay_pod(out), None)
        for (label, doc), (_, out) in zip(workloads, outputs, strict=True)
    ]
