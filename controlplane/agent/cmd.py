"""`meshplane agent` (also installed as `pilot-agent`): the sidecar agent's command line (docs/agent.md).

The injected container runs it with Istio's args, `proxy sidecar --domain ... --proxyLogLevel=...`;
every path and address is also a flag, defaulting to the env var the injector sets, so the agent
runs outside a pod too. Without a subcommand it runs the agent as `proxy sidecar` does. Exit status:
0 after a clean stop (SIGTERM, SIGINT), 2 for unusable options, 1 when nothing can be served (no
Envoy binary, the SDS socket or a port cannot be used). The subcommands `request` and `wait` are
what the injected lifecycle hooks run (see `hooks`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from controlplane import logs
from controlplane.agent import hooks
from controlplane.agent.options import (
    DEFAULT_DISCOVERY,
    KEY_ALGORITHMS,
    STATUS_PORT,
    AgentOptions,
    OptionsError,
    from_args,
)
from controlplane.quietparse import ArgumentsRefused, QuietParser

_DESCRIPTION = (
    "Run the sidecar agent of one workload: get its certificate from the CA and rotate it, serve it to "
    "Envoy over SDS, write Envoy's bootstrap and run Envoy (or, in proxyless mode, write the gRPC xDS "
    "bootstrap and certificate files), and serve readiness, application probes and merged metrics on "
    "the status port. Istio's `proxy sidecar` / `proxy router` arguments are accepted; `request` and "
    "`wait` are the commands of the injected lifecycle hooks."
)


# The flags that default to an environment variable: dest -> (flag, variable, default, choices). Parsing
# leaves them None when not given; `with_environment` then reads them from the environment the agent runs in.
ENV_FLAGS: dict[str, tuple[str, str, str | None, Sequence[str] | None]] = {}


def _flag(
    p: argparse.ArgumentParser,
    flag: str,
    env: str | None,
    default: str | None,
    help: str,
    *,
    keep_earlier: bool = False,
    **kw: Any,
) -> None:
    """One agent flag; `keep_earlier` (on the `proxy` subcommand) keeps a value given before the subcommand."""
    value = None if env else default
    source = f"env {env}; " if env else ""
    if env:
        ENV_FLAGS[kw.get("dest") or flag.lstrip("-").replace("-", "_")] = (flag, env, default, kw.get("choices"))
    if keep_earlier:
        value = argparse.SUPPRESS
    p.add_argument(flag, default=value, help=f"{help} [{source}default {default!r}]", **kw)


def with_environment(args: argparse.Namespace, env: Mapping[str, str]) -> argparse.Namespace:
    """`args` with each flag not given on the command line read from its variable in `env`, else its
    default. Raises OptionsError for a value so read that is not one of the flag's choices (argparse
    checks the choices of a flag given, not of a default)."""
    for dest, (flag, name, default, choices) in ENV_FLAGS.items():
        if getattr(args, dest, None) is not None:
            continue
        value = env.get(name, default)
        if choices is not None and value not in choices:
            raise OptionsError(f"{flag} (env {name}): {value!r} is not one of {', '.join(choices)}")
        setattr(args, dest, value)
    return args


@functools.cache
def _quiet_parser() -> argparse.ArgumentParser:
    parser = QuietParser(prog="pilot-agent")
    configure(parser)
    return parser


def options_for(argv: Sequence[str], env: Mapping[str, str]) -> AgentOptions:
    """The options `pilot-agent argv` starts with in the environment `env` alone (this process's own
    plays no part): what the injector checks an injected sidecar with. Raises OptionsError for what
    the agent would exit 2 on, and for a subcommand that is not the agent itself."""
    try:
        args = _quiet_parser().parse_args(list(argv))
    except ArgumentsRefused as exc:
        raise OptionsError(str(exc)) from None
    if args.func is not _run:
        raise OptionsError(f"{argv[0]!r} does not run the agent")
    return from_args(with_environment(args, env), env)


def add_parser(sub: Any) -> None:
    """Add `agent` (with its subcommands `proxy`, `request`, `wait`) to meshplane's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "agent", help="run the sidecar agent (certificates, SDS, Envoy) of one workload", description=_DESCRIPTION
    )
    configure(p)


def configure(p: argparse.ArgumentParser) -> None:
    """Make `p` the agent's parser: the agent's flags, and the subcommands `proxy`, `request` and `wait`."""
    _agent_flags(p)
    p.set_defaults(func=_run, node_type="sidecar")
    sub = p.add_subparsers(dest="agent_command", metavar="{proxy,request,wait}")
    proxy = sub.add_parser(
        "proxy", help="run the agent (Istio's `proxy sidecar` / `proxy router`)", description=_DESCRIPTION
    )
    proxy.add_argument("node_type", nargs="?", default="sidecar", choices=["sidecar", "router"], help="proxy type")
    _agent_flags(proxy, keep_earlier=True)
    hooks.add_parsers(sub)


def pilot_agent(argv: Sequence[str] | None = None) -> int:
    """The `pilot-agent` console script: `meshplane agent` under Istio's name, for Istio's injected commands."""
    parser = argparse.ArgumentParser(prog="pilot-agent", description=_DESCRIPTION)
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


def _agent_flags(p: argparse.ArgumentParser, *, keep_earlier: bool = False) -> None:
    flag = functools.partial(_flag, keep_earlier=keep_earlier)
    flag(p, "--domain", None, None, "DNS domain of the workload (default <namespace>.svc.cluster.local)")
    flag(p, "--discovery-address", None, None, f"xDS server host:port (default PROXY_CONFIG or {DEFAULT_DISCOVERY})")
    flag(p, "--ca-addr", "CA_ADDR", None, "CA host:port (default: the discovery address)")
    flag(p, "--istiod-san", "MESHPLANE_ISTIOD_SAN", None, "DNS name the control plane's certificate must carry")
    flag(p, "--pod-name", "POD_NAME", None, "pod name")
    flag(p, "--pod-namespace", "POD_NAMESPACE", None, "pod namespace")
    flag(p, "--instance-ip", "INSTANCE_IP", None, "pod IP")
    flag(p, "--service-account", "SERVICE_ACCOUNT", "default", "service account (the SPIFFE identity's sa)")
    flag(p, "--trust-domain", "TRUST_DOMAIN", "cluster.local", "SPIFFE trust domain")
    flag(p, "--token-file", "MESHPLANE_TOKEN_FILE", "/var/run/secrets/tokens/istio-token", "token for the CA")
    flag(p, "--root-cert", "MESHPLANE_ROOT_CERT", "/var/run/secrets/istio/root-cert.pem", "mesh root bundle")
    flag(p, "--labels-file", "MESHPLANE_LABELS_FILE", "/etc/istio/pod/labels", "pod labels (downward API file)")
    flag(p, "--proxy-dir", "MESHPLANE_PROXY_DIR", "/etc/istio/proxy", "Envoy bootstrap; proxyless: xDS socket")
    flag(p, "--sds-socket", "MESHPLANE_SDS_SOCKET", "/var/run/secrets/workload-spiffe-uds/socket", "SDS socket")
    flag(p, "--key-algorithm", "MESHPLANE_KEY_ALGORITHM", "ecdsa-p256", "workload key", choices=KEY_ALGORITHMS)
    flag(p, "--cert-ttl", "SECRET_TTL", "24h", "lifetime of workload certificates to ask for")
    flag(p, "--loopback-address", "ISTIO_META_LOOPBACK_ADDRESS", "127.0.0.1", "the pod's loopback address")
    flag(p, "--bind-address", "MESHPLANE_BIND_ADDRESS", "0.0.0.0", "address of the status, readiness, stats ports")
    flag(p, "--status-port", "MESHPLANE_STATUS_PORT", str(STATUS_PORT), "agent status port")
    flag(p, "--envoy", "MESHPLANE_ENVOY", None, "Envoy binary (default: beside python, else on PATH)")
    flag(p, "--drain-duration", None, None, "drain time on SIGTERM, 0 stops Envoy at once (default PROXY_CONFIG or 5s)")
    flag(p, "--grpc-xds-bootstrap", "GRPC_XDS_BOOTSTRAP", "/etc/istio/proxy/grpc-bootstrap.json", "proxyless")
    flag(p, "--output-certs", "OUTPUT_CERTS", "/var/lib/istio/data", "proxyless: certificate files directory")
    flag(p, "--proxyLogLevel", None, "warning", "Envoy log level", dest="proxy_log_level")
    flag(p, "--proxyComponentLogLevel", None, "misc:error", "Envoy component levels", dest="proxy_component_log_level")
    flag(p, "--log_output_level", None, "default:info", "Istio's agent log flag, accepted and ignored")
    flag(p, "--log-level", "MESHPLANE_LOG_LEVEL", "info", "agent log level", choices=logs.LEVELS)
    flag(p, "--log-format", "MESHPLANE_LOG_FORMAT", "text", "agent log format", choices=logs.FORMATS)


def _run(args: argparse.Namespace) -> int:
    from controlplane.agent.run import run

    try:
        options = from_args(with_environment(args, os.environ), os.environ)
    except OptionsError as exc:
        print(f"meshplane agent: {exc}", file=sys.stderr)
        return 2
    logs.configure(level=args.log_level, fmt=args.log_format)
    return asyncio.run(run(options))
