"""The injected containers as the kubelet would start them: `istio-proxy`'s agent options and
`istio-init`'s rules, read by meshplane's own commands from what the injector wrote."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
from typing import Any
from unittest import mock

from controlplane.agent.cmd import configure
from controlplane.agent.options import AgentOptions, from_args
from controlplane.cli import main

# What the kubelet gives the injected container from the downward API.
DOWNWARD = {"POD_NAME": "web-0", "POD_NAMESPACE": "shop", "INSTANCE_IP": "10.1.2.3", "SERVICE_ACCOUNT": "web"}


def container(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    spec = pod["spec"]
    return next((c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name), None)


def agent_options(pod: dict[str, Any]) -> AgentOptions:
    """The options `pilot-agent` starts with in the injected `istio-proxy` container; raises OptionsError
    (the agent's exit 2) for what it cannot start with."""
    proxy = container(pod, "istio-proxy")
    assert proxy is not None, "no istio-proxy container"
    env = {e["name"]: e["value"] for e in proxy.get("env", []) if "value" in e} | DOWNWARD
    args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in proxy["args"]]
    return options_from(args, env)


def options_from(args: list[str], env: dict[str, str]) -> AgentOptions:
    """The options `pilot-agent args` starts with in the environment `env` (and nothing else); raises
    OptionsError (the agent's exit 2) for what it cannot start with."""
    with mock.patch.dict(os.environ, env, clear=True):  # the flags' defaults come from the environment
        parser = argparse.ArgumentParser(prog="pilot-agent")
        configure(parser)
        return from_args(parser.parse_args(args), env)


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
