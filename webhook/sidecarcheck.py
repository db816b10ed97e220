"""Would the injected sidecar start? The `istio-init` and `istio-proxy` containers the injector wrote,
read by the parsers of the commands that run them (`meshplane iptables`, `meshplane agent`) with what
the kubelet would hand them.

The agent's args and environment come from the templates, the mesh's default proxy config and the
pod's annotations; `proxyMetadata` (in `proxy.istio.io/config` or the mesh's `defaultConfig`) sets any
variable, the agent's own among them. A value the agent refuses made a pod that was admitted and never
became ready (the agent exits 2 at every start). Checked here, the pod is refused at admission and a
config at load, naming the variable. `istio-init`'s args come from the templates, with values from
annotations that `webhook.options` has checked already, so what is refused here is a template's.

What the kubelet fills in (the downward API) gets the pod's namespace and service account, and a
stand-in the agent accepts for the rest (name, addresses). A container with a `command` of its own
(an override) runs something else and is not checked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from controlplane.agent.cmd import options_for as agent_options
from controlplane.iptables.cmd import options_for as iptables_options
from controlplane.literals import K8S_SUBDOMAIN, SUBDOMAIN_MAX
from webhook.strip import INIT, PROXY
from webhook.validate import InjectionError

CACHED_BYTES = 16 * 1024  # larger environments (a long proxyMetadata) are checked without keeping them
# Kubernetes expands `$(VAR)` in args and env values to a variable defined before it; `$$` is a `$`.
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class SidecarWouldNotStart(InjectionError):
    """An injected container (`istio-proxy`, `istio-init`) would exit at start; the message says why,
    and where the value came from."""

    def __init__(self, problem: str, *, container: str, variable: str | None) -> None:
        where = (
            f" (proxyMetadata {variable}, from proxy.istio.io/config or the mesh's defaultConfig)"
            if variable
            else " (as the injection template writes it)"
        )
        ValueError.__init__(self, f"the injected {container} container would not start: {problem}{where}")
        self.annotation = "proxy.istio.io/config" if variable else "inject.istio.io/templates"
        self.value = variable or ""
        self.container = container
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
    for entry in container.get("env") or []:  # shapes checked by `webhook.validate.container_problem`
        name = entry["name"]
        source = entry.get("valueFrom") or {}
        if entry.get("value") or not source:
            env[name] = expand(entry.get("value") or "", env)
        elif source.get("fieldRef"):
            env[name] = downward.get(source["fieldRef"]["fieldPath"], "")
        elif source.get("resourceFieldRef"):
            env[name] = "1"
    return env


def check_sidecar(pod: Mapping[str, Any], *, namespace: str, proxy_metadata: Mapping[str, Any]) -> None:
    """Raise `SidecarWouldNotStart` when the injected `istio-init` would refuse its args, or the
    `istio-proxy` container's agent its args or environment. A container that is not there, or has its
    own command, passes."""
    spec = pod.get("spec") or {}
    containers = {c.get("name"): c for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]}
    for name in (INIT, PROXY):
        container = containers.get(name)
        if container is None or container.get("command"):
            continue
        env = container_environment(container, _downward(pod, namespace)) if name == PROXY else {}
        args = tuple(expand(str(arg), env) for arg in container.get("args") or [])
        key = (name, args, tuple(env.items()))
        small = sum(len(text) for text in (*args, *env, *env.values())) <= CACHED_BYTES
        problem = _problem(key) if small else _problem.__wrapped__(key)
        if problem is not None:
            variable = next((v for v in proxy_metadata if re.search(rf"\benv {re.escape(v)}\b", problem)), None)
            raise SidecarWouldNotStart(problem, container=name, variable=variable if name == PROXY else None)


@functools.lru_cache(maxsize=256)
def _problem(key: tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]) -> str | None:
    """What the container's command says of these args and this environment; None when it starts.
    Cached: the pods of one workload are checked alike, and reading the flags costs about as much as
    injecting."""
    name, args, env = key
    try:
        if name == PROXY:
            agent_options(args, dict(env))
        else:
            iptables_options(args)
    except ValueError as exc:  # OptionsError, OptionError, ArgumentsRefused
        return str(exc)
    return None
