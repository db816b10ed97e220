"""Undoing a previous injection, so that injecting an injected pod gives the same pod.

`strip(pod, status)` reads the `sidecar.istio.io/status` annotation and removes the containers,
init containers, volumes and pull secrets it lists, puts back the user's own `istio-proxy` and
`istio-init` customisations (`overrides`) where they were, removes what templates added to
application containers (`appContainers`), restores rewritten probes and lifecycle hooks from
`ISTIO_KUBE_APP_PROBERS` and the user's Prometheus annotations from `ISTIO_PROMETHEUS_ANNOTATIONS`
(`prometheus.istio.io/scrape-targets` from its `targets`),
puts back the containers Istio recorded in `proxy.istio.io/overrides` (a pod Istio injected), and
drops the status. A status Istio wrote (names only) is read the same way.
A status that injection did not write raises `InjectionError`; mangled saved probers or Prometheus
annotations raise `InvalidPod`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from controlplane.agent.appmetrics import SCRAPE_TARGETS_ANNOTATION, ScrapeTarget, format_scrape_targets
from controlplane.jsontext import load_json
from controlplane.literals import ascii_digits
from webhook.limits import MAX_VALUE_DEPTH
from webhook.probes import PROBERS_ENV, parse_saved, restore
from webhook.validate import InjectionError, InvalidPod

PROXY = "istio-proxy"
INIT = "istio-init"
STATUS = "sidecar.istio.io/status"
PROMETHEUS_ENV = "ISTIO_PROMETHEUS_ANNOTATIONS"
PROMETHEUS_KEYS = ("scrape", "path", "port")
OVERRIDES_ANNOTATION = "proxy.istio.io/overrides"


def env_value(container: Mapping[str, Any], name: str) -> str | None:
    """The literal value of env var `name` in `container`, or None."""
    for item in container.get("env") or []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get("value"), str):
            return str(item["value"])
    return None


def _status_list(status: Mapping[str, Any], key: str, raw: str) -> list[str]:
    value = status.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InjectionError(annotation=STATUS, value=raw, problem=f"{key} must be a list of names or null")
    return value


def _remove_named(spec: dict[str, Any], key: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """Remove items named in `names` from spec[key]; return the removed ones by name."""
    items = spec.get(key)
    if not names or not isinstance(items, list):
        return {}
    removed = {item["name"]: item for item in items if isinstance(item, dict) and item.get("name") in names}
    if removed:
        kept = [item for item in items if not (isinstance(item, dict) and item.get("name") in names)]
        if kept:
            spec[key] = kept
        else:
            del spec[key]
    return removed


def strip(pod: dict[str, Any], raw: str) -> None:
    """Undo the injection that wrote status `raw` (see the module doc); mutates `pod`."""
    try:
        status = load_json(raw, max_depth=MAX_VALUE_DEPTH)
    except ValueError:
        status = None
    if not isinstance(status, dict):
        raise InjectionError(annotation=STATUS, value=raw, problem="must be a JSON object written by injection")
    spec = pod["spec"]
    meta = pod["metadata"]
    annotations: dict[str, str] = meta["annotations"]
    removed = {
        **_remove_named(spec, "initContainers", _status_list(status, "initContainers", raw)),
        **_remove_named(spec, "containers", _status_list(status, "containers", raw)),
    }
    _remove_named(spec, "volumes", _status_list(status, "volumes", raw))
    secrets = _status_list(status, "imagePullSecrets", raw)
    if secrets and isinstance(spec.get("imagePullSecrets"), list):
        kept = [s for s in spec["imagePullSecrets"] if not (isinstance(s, dict) and s.get("name") in secrets)]
        if kept:
            spec["imagePullSecrets"] = kept
        else:
            del spec["imagePullSecrets"]

    overrides = status.get("overrides") or []
    if not isinstance(overrides, list):
        raise InjectionError(annotation=STATUS, value=raw, problem="overrides must be a list")
    for entry in overrides:
        if (
            not isinstance(entry, dict)
            or entry.get("list") not in ("containers", "initContainers")
            or not isinstance(entry.get("index"), int)
            or not isinstance(entry.get("container"), dict)
        ):
            raise InjectionError(annotation=STATUS, value=raw, problem="overrides entries must be list/index/container")
        target = spec.setdefault(entry["list"], [])
        if isinstance(target, list):
            target.insert(min(entry["index"], len(target)), copy.deepcopy(entry["container"]))

    app_changes = status.get("appContainers") or {}
    if not isinstance(app_changes, dict):
        raise InjectionError(annotation=STATUS, value=raw, problem="appContainers must be an object")
    for container in spec.get("containers") or []:
        if not isinstance(container, dict) or container.get("name") not in app_changes:
            continue
        change = app_changes[container["name"]]
        if not isinstance(change, dict):
            raise InjectionError(annotation=STATUS, value=raw, problem="appContainers entries must be objects")
        for key, names in (("env", change.get("env") or []), ("volumeMounts", change.get("volumeMounts") or [])):
            if names and isinstance(container.get(key), list):
                kept = [i for i in container[key] if not (isinstance(i, dict) and i.get("name") in names)]
                if kept:
                    container[key] = kept
                else:
                    del container[key]

    old_proxy = removed.get(PROXY)
    if old_proxy is not None:
        restore(spec, parse_saved(env_value(old_proxy, PROBERS_ENV)))
        _restore_prometheus(annotations, env_value(old_proxy, PROMETHEUS_ENV))
    if OVERRIDES_ANNOTATION in annotations:
        _reinsert_istio_overrides(spec, annotations[OVERRIDES_ANNOTATION])
    del annotations[STATUS]


def _reinsert_istio_overrides(spec: dict[str, Any], raw: str) -> None:
    """Istio's `proxy.istio.io/overrides`: the user's own containers, put back where none of that name is.

    Istio records there the `istio-proxy`/`istio-init` the user wrote when it injected the pod, so
    that re-injection customises the new containers the same way; meshplane honours it likewise.
    """
    try:
        document = load_json(raw, max_depth=MAX_VALUE_DEPTH)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise InjectionError(annotation=OVERRIDES_ANNOTATION, value=raw, problem="must be a JSON object")
    for key in ("initContainers", "containers"):
        for item in document.get(key) or []:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InjectionError(annotation=OVERRIDES_ANNOTATION, value=raw, problem=f"{key}: must be named")
            target = spec.setdefault(key, [])
            present = {c.get("name") for c in target if isinstance(c, dict)} if isinstance(target, list) else None
            if present is not None and item["name"] not in present:
                target.append(copy.deepcopy(item))


def _restore_prometheus(annotations: dict[str, str], saved_json: str | None) -> None:
    if not saved_json:
        return
    try:
        saved = load_json(saved_json, max_depth=MAX_VALUE_DEPTH)
    except ValueError:
        saved = None
    if not isinstance(saved, dict):
        raise InvalidPod(f"{PROXY} env {PROMETHEUS_ENV}", "is not the JSON object injection wrote")
    for key in PROMETHEUS_KEYS:
        value = saved.get(key)
        if isinstance(value, str) and value:
            annotations[f"prometheus.io/{key}"] = value
        else:
            annotations.pop(f"prometheus.io/{key}", None)
    targets = saved.get("targets")
    if targets is None:
        return
    if not isinstance(targets, list) or not all(_is_target(t) for t in targets):
        raise InvalidPod(f"{PROXY} env {PROMETHEUS_ENV}", "targets are not the port/path list injection wrote")
    annotations[SCRAPE_TARGETS_ANNOTATION] = format_scrape_targets(
        ScrapeTarget(int(t["port"]), t["path"]) for t in targets
    )


def _is_target(item: Any) -> bool:
    port = str(item.get("port", "")) if isinstance(item, dict) else ""
    return ascii_digits(port) and len(port) <= 5 and isinstance(item.get("path"), str)
