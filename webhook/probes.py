"""Application probes and lifecycle hooks moved to the agent, and back: Istio's probe rewriting.

`rewrite(targets, status_port)` points every HTTP, TCP and gRPC probe of the given containers at the
agent's status port (`/app-health/<container>/{readyz,livez,startupz}`) and every httpGet/tcpSocket
`lifecycle` hook at `/app-lifecycle/<container>/{prestopz,poststartz}`, and returns the originals by
that path, as `ISTIO_KUBE_APP_PROBERS` holds them: `{"httpGet"|"tcpSocket"|"grpc": {...}}` with named
ports resolved, plus the probe's `timeoutSeconds`. The targets are the application containers and the
user's own init containers (a native sidecar, `restartPolicy: Always`, has probes and hooks like an
application container); exec probes and exec/sleep hooks stay as they are. A rewritten httpGet keeps
its headers, drops `host` and speaks HTTP to the agent (which speaks the original scheme to the app).

`restore(spec, probers)` undoes that for every container whose probe or hook points at the path of an
entry. Errors: a malformed probe or hook, or a named port the container does not declare, raises
`InvalidPod` naming the field; unreadable saved probers raise `InvalidPod` naming the env var.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from controlplane.jsontext import load_json
from webhook import validate as v
from webhook.limits import MAX_VALUE_DEPTH
from webhook.validate import InvalidPod

PROXY = "istio-proxy"
PROBERS_ENV = "ISTIO_KUBE_APP_PROBERS"
PROBES = (("readinessProbe", "readyz"), ("livenessProbe", "livez"), ("startupProbe", "startupz"))
HOOKS = (("preStop", "prestopz"), ("postStart", "poststartz"))
PROBE_ACTIONS = ("httpGet", "tcpSocket", "grpc")
HOOK_ACTIONS = ("httpGet", "tcpSocket")


def replace_key(mapping: dict[str, Any], old: str, new: str, value: Any) -> dict[str, Any]:
    """A copy of `mapping` with key `old` replaced by `new` at the same position."""
    return {(new if key == old else key): (value if key == old else item) for key, item in mapping.items()}


def resolve_port(container: Mapping[str, Any], port: Any, path: str, *, named_ok: bool = True) -> int:
    """The port number of a probe or hook; a name is looked up in the container's ports."""
    if isinstance(port, int) and not isinstance(port, bool):
        if not 1 <= port <= 65535:
            raise InvalidPod(path, f"{port} is not a port number 1-65535")
        return port
    if isinstance(port, str) and port and named_ok:
        for item in container.get("ports") or []:
            if isinstance(item, dict) and item.get("name") == port:
                number = item.get("containerPort")
                if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= 65535:
                    return number
                raise InvalidPod(path, f"named port {port!r} has no valid containerPort")
        raise InvalidPod(path, f"named port {port!r} is not declared in the ports of container {container['name']!r}")
    if port is None:
        raise InvalidPod(path, "is required")
    raise InvalidPod(path, f"must be a port number{' or a port name' if named_ok else ''}, got {json.dumps(port)}")


def _move(
    container: dict[str, Any],
    handler_parent: dict[str, Any],
    *,
    where: str,
    actions: tuple[str, ...],
    url: str,
    port: int,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the rewritten parent, the saved prober) for a probe or hook; None when it is not ours to move."""
    action = next((key for key in actions if key in handler_parent), None)
    if action is None:
        return None
    handler = handler_parent[action]
    if not isinstance(handler, dict):
        raise InvalidPod(f"{where}.{action}", f"must be an object, got {v.type_name(handler)}")
    original = resolve_port(container, handler.get("port"), f"{where}.{action}.port", named_ok=action != "grpc")
    saved: dict[str, Any] = {action: {**handler, "port": original}}
    if action == "httpGet":
        http = {key: item for key, item in handler.items() if key != "host"}
        http["path"] = url
        http["port"] = port
        if http.get("scheme") == "HTTPS":
            http["scheme"] = "HTTP"
    else:
        http = {"path": url, "port": port}
    return replace_key(handler_parent, action, "httpGet", http), saved


def rewrite(targets: list[tuple[str, dict[str, Any]]], status_port: int) -> dict[str, Any]:
    """Move the probes and hooks of `targets` ((field path, container)) to the agent; return the originals."""
    probers: dict[str, Any] = {}
    for where, container in targets:
        name = container["name"]
        for field, suffix in PROBES:
            probe = container.get(field)
            if probe is None:
                continue
            if not isinstance(probe, dict):
                raise InvalidPod(f"{where}.{field}", f"must be an object, got {v.type_name(probe)}")
            url = f"/app-health/{name}/{suffix}"
            moved = _move(container, probe, where=f"{where}.{field}", actions=PROBE_ACTIONS, url=url, port=status_port)
            if moved is not None:
                container[field], probers[url] = moved
                if "timeoutSeconds" in probe:
                    probers[url]["timeoutSeconds"] = probe["timeoutSeconds"]
        lifecycle = container.get("lifecycle")
        if lifecycle is None:
            continue
        if not isinstance(lifecycle, dict):
            raise InvalidPod(f"{where}.lifecycle", f"must be an object, got {v.type_name(lifecycle)}")
        for hook, suffix in HOOKS:
            handler = lifecycle.get(hook)
            if handler is None:
                continue
            if not isinstance(handler, dict):
                raise InvalidPod(f"{where}.lifecycle.{hook}", f"must be an object, got {v.type_name(handler)}")
            url = f"/app-lifecycle/{name}/{suffix}"
            moved = _move(
                container, handler, where=f"{where}.lifecycle.{hook}", actions=HOOK_ACTIONS, url=url, port=status_port
            )
            if moved is not None:
                lifecycle = {**lifecycle, hook: moved[0]}
                probers[url] = moved[1]
        container["lifecycle"] = lifecycle
    return probers


def parse_saved(text: str | None) -> dict[str, Any]:
    """The saved probers of `ISTIO_KUBE_APP_PROBERS` (empty when absent). Raises `InvalidPod` if mangled."""
    if not text:
        return {}
    try:
        probers = load_json(text, max_depth=MAX_VALUE_DEPTH)
    except ValueError:
        probers = None
    if not isinstance(probers, dict):
        raise InvalidPod(f"{PROXY} env {PROBERS_ENV}", "is not the JSON object injection wrote")
    return probers


def _original(handler_parent: Any, url: str, probers: Mapping[str, Any], actions: tuple[str, ...]) -> Any:
    """The rewritten parent with its original action back, or None when it was not rewritten to `url`."""
    if not isinstance(handler_parent, dict) or not isinstance(handler_parent.get("httpGet"), dict):
        return None
    original = probers.get(url)
    if handler_parent["httpGet"].get("path") != url or not isinstance(original, dict):
        return None
    action = next((key for key in actions if isinstance(original.get(key), dict)), None)
    if action is None:
        return None
    return replace_key(handler_parent, "httpGet", action, copy.deepcopy(original[action]))


def restore(spec: dict[str, Any], probers: Mapping[str, Any]) -> None:
    """Put back every probe and hook that `rewrite` moved, from its saved original."""
    if not probers:
        return
    for list_key in ("initContainers", "containers"):
        for container in spec.get(list_key) or []:
            if not isinstance(container, dict) or container.get("name") == PROXY:
                continue
            name = container.get("name")
            for field, suffix in PROBES:
                restored = _original(container.get(field), f"/app-health/{name}/{suffix}", probers, PROBE_ACTIONS)
                if restored is not None:
                    container[field] = restored
            lifecycle = container.get("lifecycle")
            if not isinstance(lifecycle, dict):
                continue
            for hook, suffix in HOOKS:
                restored = _original(lifecycle.get(hook), f"/app-lifecycle/{name}/{suffix}", probers, HOOK_ACTIONS)
                if restored is not None:
                    lifecycle[hook] = restored
