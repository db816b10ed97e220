"""The objects of a revision tag, and the webhook changes the `default` tag makes, as pure functions.

A tag T pointing at revision R is two objects, both labelled `istio.io/tag=T` and `istio.io/rev=R`:
the MutatingWebhookConfiguration `istio-revision-tag-T` (R's injector webhook with its clientConfig,
caBundle and policies, under Istio's selector table for `istio.io/rev=T`; the `default` tag also
takes the legacy `namespace.`/`object.` webhooks, and `auto.` when R has it) and the Service
`istiod-revision-tag-T` in R's namespace, with Istio's istiod ports, selecting R's istiod pods. Their
other labels are copied from R's configuration (without `app`), as istioctl copies them, so a tag
made here is the one charts/istiod renders from `revisionTags` for R's release.

The `default` tag takes over the legacy webhooks of every revision, and all injector webhooks of the
revision named `default`: `deactivated` sets both their selectors to Istio's marker
`istio.io/deactivated: never-match` (kept, not deleted, so they can come back); `reactivated` gives
never-match injector webhooks the selectors of the same table again.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import yaml

from controlplane.kube.client import JsonObject
from controlplane.model import yamltext
from controlplane.ops.common import CommandError

REV_LABEL = "istio.io/rev"
TAG_LABEL = "istio.io/tag"
INJECTOR_SUFFIX = "sidecar-injector.istio.io"
DEFAULT = "default"
NEVER_MATCH: JsonObject = {"matchLabels": {"istio.io/deactivated": "never-match"}}
SYSTEM_NAMESPACES = ["kube-system", "kube-public", "kube-node-lease", "local-path-storage"]
SERVICE_PORTS = [  # Istio's istiod Service ports, as charts/istiod renders them
    {"name": "grpc-xds", "port": 15010, "targetPort": 15010, "protocol": "TCP"},
    {"name": "https-dns", "port": 15012, "targetPort": 15012, "protocol": "TCP"},
    {"name": "https-webhook", "port": 443, "targetPort": 15017, "protocol": "TCP"},
    {"name": "http-monitoring", "port": 15014, "targetPort": 15014, "protocol": "TCP"},
]


def _expr(key: str, operator: str, *values: str) -> JsonObject:
    return {"key": key, "operator": operator, **({"values": list(values)} if values else {})}


def selector_table(selects: str) -> dict[str, tuple[JsonObject, JsonObject]]:
    """Istio's injector webhooks by name prefix: their (namespaceSelector, objectSelector).

    `selects` is the `istio.io/rev` value the `rev.` webhooks select (a revision or a tag).
    """
    no_rev, no_injection = _expr(REV_LABEL, "DoesNotExist"), _expr("istio-injection", "DoesNotExist")
    not_opted_out = _expr("sidecar.istio.io/inject", "NotIn", "false")
    table: dict[str, tuple[list[JsonObject], list[JsonObject]]] = {
        "rev.namespace.": ([_expr(REV_LABEL, "In", selects), no_injection], [not_opted_out]),
        "rev.object.": ([no_rev, no_injection], [not_opted_out, _expr(REV_LABEL, "In", selects)]),
        "namespace.": ([_expr("istio-injection", "In", "enabled")], [not_opted_out]),
        "object.": ([no_injection, no_rev], [_expr("sidecar.istio.io/inject", "In", "true"), no_rev]),
        "auto.": (
            [no_injection, no_rev, _expr("kubernetes.io/metadata.name", "NotIn", *SYSTEM_NAMESPACES)],
            [_expr("sidecar.istio.io/inject", "DoesNotExist"), no_rev],
        ),
    }
    return {prefix: ({"matchExpressions": ns}, {"matchExpressions": obj}) for prefix, (ns, obj) in table.items()}


def prefix_of(webhook: JsonObject) -> str:
    return str(webhook.get("name", "")).removesuffix(INJECTOR_SUFFIX)


def labels_of(obj: JsonObject) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def name_of(obj: JsonObject) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def describe(obj: JsonObject) -> str:
    """`Kind namespace/name`, or `Kind name` for a cluster-scoped object."""
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', 'object')} {where}{meta.get('name', '?')}"


def tag_objects(*, tag: str, revision_config: JsonObject) -> list[JsonObject]:
    """The MutatingWebhookConfiguration and Service of tag `tag`, pointing at `revision_config`'s revision.

    `revision_config` is the revision's own injector configuration (labelled `istio.io/rev`, no tag).
    Raises CommandError when it has no `*sidecar-injector.istio.io` webhook to copy.
    """
    labels = labels_of(revision_config)
    revision = labels[REV_LABEL]
    core = next((w for w in revision_config.get("webhooks") or [] if prefix_of(w) != w.get("name")), None)
    if core is None:
        raise CommandError(
            f"{describe(revision_config)} has no webhook named *{INJECTOR_SUFFIX} to copy; "
            f"reinstall revision {revision!r} (helm upgrade) and try again"
        )
    prefixes = ["rev.namespace.", "rev.object."]
    if tag == DEFAULT:
        present = {prefix_of(w) for w in revision_config.get("webhooks") or []}
        prefixes += ["namespace.", "object.", *(["auto."] if "auto." in present else [])]
    table, webhooks = selector_table(tag), []
    for prefix in prefixes:
        hook = copy.deepcopy(core)
        hook["name"] = prefix + INJECTOR_SUFFIX
        hook["namespaceSelector"], hook["objectSelector"] = copy.deepcopy(table[prefix])
        webhooks.append(hook)
    common = {k: v for k, v in labels.items() if k != "app"} | {TAG_LABEL: tag, REV_LABEL: revision}
    service_namespace = ((core.get("clientConfig") or {}).get("service") or {}).get("namespace") or "istio-system"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": f"istio-revision-tag-{tag}", "labels": {"app": "sidecar-injector", **common}},
            "webhooks": webhooks,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": f"istiod-revision-tag-{tag}",
                "namespace": service_namespace,
                "labels": {"app": "istiod", "istio": "pilot", **common},
            },
            "spec": {"ports": copy.deepcopy(SERVICE_PORTS), "selector": {"app": "istiod", REV_LABEL: revision}},
        },
    ]


def deactivated(config: JsonObject) -> JsonObject | None:
    """`config` with the webhooks the `default` tag takes over set to never-match, or None if none is active.

    Those are the legacy (`namespace.`, `object.`, `auto.`) webhooks of every revision, and every
    injector webhook of the revision named `default` (its `rev.` webhooks select `istio.io/rev=default`).
    """
    everything = labels_of(config).get(REV_LABEL) == DEFAULT
    changed = copy.deepcopy(config)
    hits = 0
    for hook in changed.get("webhooks") or []:
        prefix = prefix_of(hook)
        injector = prefix != hook.get("name")
        if not injector or not (everything or not prefix.startswith("rev.")):
            continue
        if hook.get("namespaceSelector") != NEVER_MATCH or hook.get("objectSelector") != NEVER_MATCH:
            hook["namespaceSelector"], hook["objectSelector"] = copy.deepcopy(NEVER_MATCH), copy.deepcopy(NEVER_MATCH)
            hits += 1
    return changed if hits else None


def reactivated(config: JsonObject) -> JsonObject | None:
    """`config` with its never-match injector webhooks given their table selectors again, or None if none is."""
    changed, table = copy.deepcopy(config), selector_table(labels_of(config).get(REV_LABEL, ""))
    hits = 0
    for hook in changed.get("webhooks") or []:
        selectors = table.get(prefix_of(hook))
        if selectors and hook.get("namespaceSelector") == NEVER_MATCH and hook.get("objectSelector") == NEVER_MATCH:
            hook["namespaceSelector"], hook["objectSelector"] = copy.deepcopy(selectors)
            hits += 1
    return changed if hits else None


class _PlainDumper(yamltext.YamlDumper):
    """Writes a repeated value out again instead of as an anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def manifest(objects: Iterable[JsonObject]) -> str:
    """Objects as multi-document YAML, ready for `kubectl apply -f -`."""
    return yaml.dump_all(list(objects), Dumper=_PlainDumper, sort_keys=False, explicit_start=True)
