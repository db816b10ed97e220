"""Would the injected sidecar start? The `istio-proxy` container the injector wrote, read by the agent's
own option reader with what the kubelet would hand it.

The agent's args and environment come from the templates, the mesh's default proxy config and the
pod's annotations; `proxyMetadata` (in `proxy.istio.io/config` or the mesh's `defaultConfig`) sets any
variable, the agent's own among them. A value the agent refuses made a pod that was admitted and never
became ready (the agent exits 2 at every start). Checked here, the pod is refused at admission and a
config at load, naming the variable.

What the kubelet fills in (the downward API) gets the pod's namespace and service account, and a
stand-in the agent accepts for the rest (name, addresses). A container with a `command` of its own
(an override) runs something else and is not checked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from controlplane.agent.cmd import options_for
from controlplane.agent.options import OptionsError
from controlplane.literals import K8S_SUBDOMAIN, SUBDOMAIN_MAX
from webhook.strip import PROXY
from webhook.validate import InjectionError

CACHED_BYTES = 16 * 1024  # larger environments (a long proxyMetadata) are checked without keeping them
# Kubernetes expands `$(VAR)` in args and env values to a variable defined before it; `$$` is a `$`.
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class SidecarWouldNotStart(InjectionError):
    """The injected `istio-proxy` container's agent would exit at start; the message says why, and
    where the variable came from."""

    def __init__(self, problem: str, *, variable: str | None) -> None:
        where = (
            f" (proxyMetadata {variable}, from proxy.istio.io/config or the mesh's defaultConfig)"
            if variable
            else " (as the injection template writes it)"
        )
        ValueError.__init__(self, f"the injected {PROXY} container would not start: {problem}{where}")
        self.annotation = "proxy.istio.io/config" if variable else "inject.istio.io/templates"
        self.value = variable or ""
        self.variable = variable
        self.kind = "sidecar"
        self.problem = problem


def expand(text: str, env: Mapping[str, str]) -> str:
    return _REFERENCE.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _downward(pod: Mapping[str, Any], namespace: str) -> dict[str, str]:
    account = (pod.get("spec") or {}).get("serviceAccountName")
    if not isinstance(account, str) or len(account) > SUBDOMAIN_MAX or not K8S_SUBDOMAIN.fullmatch(account):
        account = "default"  # the API server refuses the pod itself, naming the field
    return {
        "metadata.name": "pod",  # often not known yet at admission; any name the API server takes will do
        "metadata.namespace": namespace,
        "spec.serviceAccountName": account,
        "spec.nodeName": "node",
        "status.podIP": "10.0.0.1",
        "status.hostIP": "10.0.0.2",
    }


def container_environment(container: Mapping[str, Any], downward: Mapping[str, str]) -> dict[str, str]:
    """The environment the kubelet starts `container` with: literal values (expanded), downward-API
    fields from `downward`, resource fields as a number; a later entry of the same name wins."""
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        name = entry["name"]
        if "value" in entry:
            env[name] = expand(str(entry["value"]), env)
            continue
        source = entry.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = downward.get(source["fieldRef"].get("fieldPath", ""), "")
        elif "resourceFieldRef" in source:
            env[name] = "1"
    return env


def check_sidecar(pod: Mapping[str, Any], *, namespace: str, proxy_metadata: Mapping[str, Any]) -> None:
    """Raise `SidecarWouldNotStart` when the injected `istio-proxy` container's agent would refuse its
    args or environment. A pod without that container, or whose container has its own command, passes."""
    spec = pod.get("spec") or {}
    container = next((c for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
                      if c.get("name") == PROXY), None)  # fmt: skip
    if container is None or container.get("command"):
        return
    env = container_environment(container, _downward(pod, namespace))
    args = tuple(expand(str(arg), env) for arg in container.get("args") or [])
    key = (args, tuple(env.items()))
    small = sum(len(text) for text in (*args, *env, *env.values())) <= CACHED_BYTES
    problem = _problem(key) if small else _problem.__wrapped__(key)
    if problem is not None:
        variable = next((name for name in proxy_metadata if re.search(rf"\benv {re.escape(name)}\b", problem)), None)
        raise SidecarWouldNotStart(problem, variable=variable)


@functools.lru_cache(maxsize=256)
def _problem(key: tuple[tuple[str, ...], tuple[tuple[str, str], ...]]) -> str | None:
    """What the agent says of these args and this environment; None when it starts. Cached: the pods of
    one workload are checked alike, and reading the flags costs about as much as injecting."""
    args, env = key
    try:
        options_for(args, dict(env))
    except OptionsError as exc:
        return str(exc)
    return None
