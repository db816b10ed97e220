"""The injected containers as the kubelet would start them: `istio-proxy`'s agent options and
`istio-init`'s rules, read by meshplane's own commands from what the injector wrote."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from controlplane.agent.cmd import options_for
from controlplane.agent.options import AgentOptions
from controlplane.cli import main
from webhook.sidecarcheck import container_environment, expand

# What the kubelet gives the injected container from the downward API.
DOWNWARD = {"POD_NAME": "web-0", "POD_NAMESPACE": "shop", "INSTANCE_IP": "10.1.2.3", "SERVICE_ACCOUNT": "web"}
FIELDS = {"metadata.name": "web-0", "metadata.namespace": "shop", "status.podIP": "10.1.2.3",
          "spec.serviceAccountName": "web", "status.hostIP": "10.1.0.1", "spec.nodeName": "node-1"}  # fmt: skip


def container(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    spec = pod["spec"]
    return next((c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name), None)


def agent_options(pod: dict[str, Any]) -> AgentOptions:
    """The options `pilot-agent` starts with in the injected `istio-proxy` container; raises OptionsError
    (the agent's exit 2) for what it cannot start with."""
    proxy = container(pod, "istio-proxy")
    assert proxy is not None, "no istio-proxy container"
    env = container_environment(proxy, FIELDS)
    return options_for([expand(arg, env) for arg in proxy["args"]], env)


def iptables_dry_run(pod: dict[str, Any]) -> tuple[int, str]:
    """`meshplane iptables --dry-run` with the injected `istio-init` container's args, through the
    command line's own entry point: its exit code and stderr ((0, "") when the pod has no istio-init)."""
    init = container(pod, "istio-init")
    if init is None:
        return 0, ""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["iptables", *init["args"], "--dry-run"])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()
