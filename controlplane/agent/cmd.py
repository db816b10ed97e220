"""`meshplane agent`: the sidecar agent's command line (docs/agent.md has the table of flags).

The injected container runs it with Istio's args, `proxy sidecar --domain ... --proxyLogLevel=...`;
every path and address is also a flag, defaulting to the env var the injector sets, so the agent
runs outside a pod too. Exit status: 0 after a clean stop (SIGTERM, SIGINT), 2 for unusable
options, 1 when nothing can be served (no Envoy binary, the SDS socket or a port cannot be used).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from controlplane import logs
from controlplane.agent.options import (
    DEFAULT_DISCOVERY,
    KEY_ALGORITHMS,
    STATUS_PORT,
    OptionsError,
    from_args,
)


def _flag(p: argparse.ArgumentParser, flag: str, env: str | None, default: str | None, help: str, **kw: Any) -> None:
    value = os.environ.get(env, default) if env else default
    source = f"env {env}; " if env else ""
    p.add_argument(flag, default=value, help=f"{help} [{source}default {default!r}]", **kw)


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "agent",
        help="run the sidecar agent (certificates, SDS, Envoy) of one workload",
        description=(
            "Run the sidecar agent of one workload: get its certificate from the CA and rotate it, serve it to "
            "Envoy over SDS, write Envoy's bootstrap and run Envoy (or, in proxyless mode, write the gRPC xDS "
            "bootstrap and certificate files), and serve readiness, application probes and merged metrics on "
            "the status port. Istio's `proxy sidecar` / `proxy router` arguments are accepted."
        ),
    )
    p.add_argument("proxy", nargs="?", choices=["proxy"], help="Istio's first argument, accepted and ignored")
    p.add_argument("node_type", nargs="?", default="sidecar", choices=["sidecar", "router"], help="proxy type")
    _flag(p, "--domain", None, None, "DNS domain of the workload (default <namespace>.svc.cluster.local)")
    _flag(p, "--discovery-address", None, None, f"xDS server host:port (default PROXY_CONFIG or {DEFAULT_DISCOVERY})")
    _flag(p, "--ca-addr", "CA_ADDR", None, "CA host:port (default: the discovery address)")
    _flag(p, "--istiod-san", "MESHPLANE_ISTIOD_SAN", None, "DNS name the control plane's certificate must carry")
    _flag(p, "--pod-name", "POD_NAME", None, "pod name")
    _flag(p, "--pod-namespace", "POD_NAMESPACE", None, "pod namespace")
    _flag(p, "--instance-ip", "INSTANCE_IP", None, "pod IP")
    _flag(p, "--service-account", "SERVICE_ACCOUNT", "default", "service account (the SPIFFE identity's sa)")
    _flag(p, "--trust-domain", "TRUST_DOMAIN", "cluster.local", "SPIFFE trust domain")
    _flag(p, "--token-file", "MESHPLANE_TOKEN_FILE", "/var/run/secrets/tokens/istio-token", "token for the CA")
    _flag(p, "--root-cert", "MESHPLANE_ROOT_CERT", "/var/run/secrets/istio/root-cert.pem", "mesh root bundle")
    _flag(p, "--labels-file", "MESHPLANE_LABELS_FILE", "/etc/istio/pod/labels", "pod labels (downward API file)")
    _flag(p, "--proxy-dir", "MESHPLANE_PROXY_DIR", "/etc/istio/proxy", "Envoy bootstrap; proxyless: xDS socket")
    _flag(p, "--sds-socket", "MESHPLANE_SDS_SOCKET", "/var/run/secrets/workload-spiffe-uds/socket", "SDS socket")
    _flag(p, "--key-algorithm", "MESHPLANE_KEY_ALGORITHM", "ecdsa-p256", "workload key", choices=KEY_ALGORITHMS)
    _flag(p, "--cert-ttl", "SECRET_TTL", "24h", "lifetime of workload certificates to ask for")
    _flag(p, "--loopback-address", "ISTIO_META_LOOPBACK_ADDRESS", "127.0.0.1", "the pod's loopback address")
    _flag(p, "--bind-address", "MESHPLANE_BIND_ADDRESS", "0.0.0.0", "address of the status, readiness, stats ports")
    _flag(p, "--status-port", "MESHPLANE_STATUS_PORT", str(STATUS_PORT), "agent status port")
    _flag(p, "--envoy", "MESHPLANE_ENVOY", None, "Envoy binary (default: beside python, else on PATH)")
    _flag(p, "--drain-duration", None, None, "drain time on SIGTERM (default PROXY_CONFIG or 5s)")
    _flag(p, "--grpc-xds-bootstrap", "GRPC_XDS_BOOTSTRAP", "/etc/istio/proxy/grpc-bootstrap.json", "proxyless")
    _flag(p, "--output-certs", "OUTPUT_CERTS", "/var/lib/istio/data", "proxyless: certificate files directory")
    _flag(p, "--proxyLogLevel", None, "warning", "Envoy log level", dest="proxy_log_level")
    _flag(p, "--proxyComponentLogLevel", None, "misc:error", "Envoy component levels", dest="proxy_component_log_level")
    _flag(p, "--log_output_level", None, "default:info", "Istio's agent log flag, accepted and ignored")
    _flag(p, "--log-level", "MESHPLANE_LOG_LEVEL", "info", "agent log level", choices=logs.LEVELS)
    _flag(p, "--log-format", "MESHPLANE_LOG_FORMAT", "text", "agent log format", choices=logs.FORMATS)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from controlplane.agent.run import run

    try:
        options = from_args(args, os.environ)
    except OptionsError as exc:
        print(f"meshplane agent: {exc}", file=sys.stderr)
        return 2
    logs.configure(level=args.log_level, fmt=args.log_format)
    return asyncio.run(run(options))
