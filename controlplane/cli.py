"""The `meshplane` command line (also `python -m controlplane`)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from certs.authenticate.localtoken import parse_duration
from certs.pem import KEY_ALGORITHMS
from controlplane import logs
from controlplane.literals import INT32_MAX, decimal, natural, whole_number
from controlplane.settings import Address, Settings, SettingsError

log = logging.getLogger("meshplane")

ENV_PREFIX = "MESHPLANE_"


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _add(parser: argparse.ArgumentParser, flag: str, *, help: str, default: Any = None, **kw: Any) -> None:
    """A flag whose default comes from MESHPLANE_<FLAG> when set, else `default`."""
    env = _env_name(flag)
    value = os.environ.get(env, default)
    parser.add_argument(flag, default=value, help=f"{help} [env {env}; default {default!r}]", **kw)


def _serve_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the control plane (webhook, CA, xDS) for one revision",
        description=(
            "Run one revision of the control plane. With --config-dir it runs in local mode: "
            "no Kubernetes, config read from YAML files in DIR (watched), CA root written to "
            "STATE_DIR/root-cert.pem. Every flag can also be set with an env var MESHPLANE_<FLAG>."
        ),
    )
    d = Settings()
    _add(p, "--revision", default=d.revision, help="control plane revision (istio.io/rev)")
    _add(p, "--namespace", default=d.namespace, help="namespace the control plane runs in")
    _add(
        p,
        "--kubeconfig",
        default=None,
        help="kubeconfig file (Kubernetes mode; in-cluster config if unset)",
    )
    _add(
        p,
        "--config-dir",
        default=None,
        help="local mode: directory of YAML config, watched for edits",
    )
    _add(p, "--state-dir", default=str(d.state_dir), help="directory for CA key material and state")
    _add(p, "--grpc-addr", default=str(d.grpc_addr), help="plaintext xDS gRPC address")
    _add(
        p,
        "--secure-grpc-addr",
        default=str(d.secure_grpc_addr),
        help="TLS gRPC address (xDS and CA)",
    )
    _add(
        p,
        "--webhook-addr",
        default=str(d.webhook_addr),
        help="sidecar injection webhook HTTPS address",
    )
    _add(p, "--monitoring-addr", default=str(d.monitoring_addr), help="Prometheus /metrics address")
    _add(
        p,
        "--http-addr",
        default=str(d.http_addr),
        help="/ready and /debug address (localhost by default)",
    )
    _add(p, "--trust-domain", default=d.trust_domain, help="SPIFFE trust domain")
    _add(p, "--cluster-id", default=d.cluster_id, help="cluster id given to injected proxies")
    _add(
        p,
        "--serving-hosts",
        default="",
        help="extra comma-separated DNS names or IPs for the serving certificate",
    )
    _add(p, "--log-format", default=d.log_format, choices=logs.FORMATS, help="log format")
    _add(p, "--log-level", default=d.log_level, choices=logs.LEVELS, help="log level")
    _add(
        p,
        "--grace-period",
        default=str(d.grace_period),
        help="seconds to finish in-flight requests on SIGTERM",
    )
    _add(
        p,
        "--max-workload-cert-ttl",
        default="2160h",
        help="longest workload certificate the CA signs (seconds or 90s, 15m, 2160h); longer requests are refused",
    )
    _add(
        p,
        "--ca-key-algorithm",
        default=d.ca_key_algorithm,
        choices=KEY_ALGORITHMS,
        help="key of the self-signed root CA when meshplane creates one (an existing root is kept as it is)",
    )
    _add(
        p,
        "--allow-new-root",
        default=False,
        action="store_true",
        help="local mode: create a new root CA although STATE_DIR holds a trust bundle whose key is missing "
        "(certificates issued under the old root stop verifying)",
    )
    _add(
        p,
        "--max-streams-per-client",
        default=str(d.max_streams_per_client),
        help="xDS streams one client address (a pod; a node for host-network pods) may have open at once, "
        "both xDS ports together; more are refused with RESOURCE_EXHAUSTED. A sidecar needs one",
    )
    _add(
        p,
        "--max-request-bytes",
        default=_size_text(d.max_request_bytes),
        help="largest gRPC request message either gRPC port takes (bytes, or with Ki or Mi), from 1Mi to 256Mi; "
        "larger ones end their stream with RESOURCE_EXHAUSTED. gRPC holds a message up to this size before "
        "meshplane sees it, so one client address can make the server hold this times --max-streams-per-client "
        "(Istio: ISTIO_GPRC_MAXRECVMSGSIZE)",
    )
    _add(
        p,
        "--max-connection-age",
        default="30m",
        help="how long a client connection to either gRPC port is kept (seconds or 90s, 15m, 1h, at most 596h; 0: for "
        "ever); "
        "then it is asked to reconnect (HTTP/2 GOAWAY; ±10%% jitter) and its xDS stream is ended with UNAVAILABLE "
        "10s later (on the secure port, 1.1-1.2 times the age plus 10s after the stream opened). A proxy's "
        "reconnect may land on another replica, so a replica started later gets its share (Istio: "
        "keepaliveMaxServerConnectionAge, 30m)",
    )
    _add(
        p,
        "--max-connection-idle",
        default="5m",
        help="how long a client connection to either gRPC port is kept with no call open on it (seconds or 90s, "
        "5m, at most 596h; 0: for ever); then it is closed (HTTP/2 GOAWAY). A proxy's xDS stream keeps its "
        "connection busy; a CA client reconnects for its next certificate. Connections that never make a call "
        "hold no slot longer; a connection must also finish its setup (its TLS handshake on the secure port, its "
        "HTTP/2 preface and SETTINGS on the plaintext one) within 10s, or this time when shorter",
    )
    _add(
        p,
        "--max-xds-connections",
        default="auto",
        help="connections each gRPC port holds open at once (a proxy needs one on the port it uses for xDS; on the "
        "secure port its agent's CA client needs another); more are closed as they "
        "are accepted. auto: 16384, or what the open-files limit leaves when less (every port shares it; meshplane "
        "raises the soft limit to the hard one and keeps 1024 for itself)",
    )
    _add(
        p,
        "--ca-workers",
        default="auto",
        help="processes that check CSRs and sign for the CA; 0 signs on the event loop; auto: 0 on one core, "
        "else one per spare core up to 4",
    )
    p.set_defaults(func=_cmd_serve)


def settings_from_args(args: argparse.Namespace) -> Settings:
    def addr(name: str) -> Address:
        return Address.parse(getattr(args, name.replace("-", "_")), field=f"--{name}")

    grace = decimal(args.grace_period.strip())
    if grace is None:
        raise SettingsError(f"--grace-period: {args.grace_period!r} is not a number of seconds")
    if grace < 0:
        raise SettingsError(f"--grace-period: {grace} must not be negative")
    try:
        max_ttl = parse_duration(args.max_workload_cert_ttl, field="--max-workload-cert-ttl")
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if max_ttl.total_seconds() <= 0:
        raise SettingsError("--max-workload-cert-ttl: must be positive")
    ca_workers = _ca_workers(args.ca_workers)
    max_streams = _count(args.max_streams_per_client, field="--max-streams-per-client", what="a number of streams")
    max_xds = _xds_connections(args.max_xds_connections)
    max_request = _size(args.max_request_bytes, field="--max-request-bytes", low=MIB, high=256 * MIB)
    max_age = _connection_time(args.max_connection_age, field="--max-connection-age")
    max_idle = _connection_time(args.max_connection_idle, field="--max-connection-idle")
    if args.config_dir and args.kubeconfig:
        raise SettingsError(
            "--config-dir and --kubeconfig: choose one; --config-dir runs local mode (no Kubernetes), "
            "--kubeconfig runs Kubernetes mode against that cluster"
        )
    if not args.revision or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in args.revision):
        raise SettingsError(f"--revision: {args.revision!r} must be lowercase letters, digits and '-'")
    return Settings(
        revision=args.revision,
        namespace=args.namespace,
        kubeconfig=pathlib.Path(args.kubeconfig) if args.kubeconfig else None,
        config_dir=pathlib.Path(args.config_dir) if args.config_dir else None,
        state_dir=pathlib.Path(args.state_dir),
        grpc_addr=addr("grpc-addr"),
        secure_grpc_addr=addr("secure-grpc-addr"),
        webhook_addr=addr("webhook-addr"),
        monitoring_addr=addr("monitoring-addr"),
        http_addr=addr("http-addr"),
        trust_domain=args.trust_domain,
        cluster_id=args.cluster_id,
        serving_hosts=tuple(h.strip() for h in args.serving_hosts.split(",") if h.strip()),
        log_format=args.log_format,
        log_level=args.log_level,
        grace_period=grace,
        max_workload_cert_ttl=max_ttl.total_seconds(),
        ca_workers=ca_workers,
        max_streams_per_client=max_streams,
        max_request_bytes=max_request,
        max_connection_age=max_age or None,
        max_connection_idle=max_idle or None,
        max_xds_connections=max_xds,
        ca_key_algorithm=args.ca_key_algorithm,
        allow_new_root=_boolean(args.allow_new_root, field="--allow-new-root"),
    )


def _xds_connections(value: str) -> int | None:
    if value.strip() == "auto":
        return None
    return _count(value, field="--max-xds-connections", what="a number of connections or auto")


def _count(value: str, *, field: str, what: str) -> int:
    """A whole number of at least 1. Raises SettingsError naming `field` and `what` it takes."""
    count = whole_number(value.strip())
    if count is None:
        raise SettingsError(f"{field}: {value!r} is not {what}")
    if count < 1:
        raise SettingsError(f"{field}: {count} must be at least 1")
    return count


# gRPC takes its connection times as an int of milliseconds: 596h31m23.647s at most.
MAX_CONNECTION_TIME_MS = INT32_MAX


def _connection_time(value: str, *, field: str) -> float:
    """A gRPC connection time: 0 (for ever) or whole milliseconds gRPC can hold. Raises SettingsError."""
    try:
        seconds = parse_duration(value, field=field).total_seconds()
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if seconds and not 1 <= round(seconds * 1000) <= MAX_CONNECTION_TIME_MS:
        raise SettingsError(f"{field}: {value!r} must be 0 (for ever) or from 1ms to 596h31m23s, as gRPC takes it")
    return seconds


MIB = 1024 * 1024
_SIZE_UNITS = {"": 1, "Ki": 1024, "KiB": 1024, "Mi": MIB, "MiB": MIB}


def _size_text(size: int) -> str:
    return f"{size // MIB}Mi" if size % MIB == 0 else str(size)


def _size(value: str, *, field: str, low: int, high: int) -> int:
    """A byte size given as a number, or with Ki or Mi. Raises SettingsError naming `field`."""
    text = value.strip()
    digits = text.rstrip("KMiB")
    number = natural(digits.strip())
    unit = _SIZE_UNITS.get(text[len(digits) :].strip())
    if number is None or unit is None:
        raise SettingsError(f"{field}: {value!r} is not a size (bytes, or a number with Ki or Mi)")
    size = number * unit
    if not low <= size <= high:
        raise SettingsError(f"{field}: {value} must be from {_size_text(low)} to {_size_text(high)}")
    return size


def _boolean(value: bool | str, *, field: str) -> bool:
    """A switch given as a flag (bool) or through its env var (text). Raises SettingsError naming `field`."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise SettingsError(f"{field}: {value!r} is not true or false (env {_env_name(field)})")


def _ca_workers(text: str) -> int | None:
    """`auto` -> None (chosen from the cores at start), else a count 0-64. Raises SettingsError naming the flag."""
    if text.strip().lower() == "auto":
        return None
    workers = whole_number(text.strip())
    if workers is None:
        raise SettingsError(f"--ca-workers: {text!r} is not a number of processes or 'auto'")
    if not 0 <= workers <= 64:
        raise SettingsError(f"--ca-workers: {workers} is out of range 0-64")
    return workers


def _cmd_serve(args: argparse.Namespace) -> int:
    from controlplane.server import run

    settings = settings_from_args(args)
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    return asyncio.run(run(settings))


# Each command and the module whose `add_parser` adds it, in the order `--help` lists them. A run
# imports only its own command's module: a sidecar's `agent` or the `iptables` init container does not
# load the demo's terminal tables or the cluster commands at every start.
COMMANDS: dict[str, str] = {
    "serve": "controlplane.cli",
    "token": "certs.tokencmd",
    "certificate": "controlplane.certcmd",
    "inject": "controlplane.injectcmd",
    "proxy-status": "controlplane.proxystatuscmd",
    "agent": "controlplane.agent.cmd",
    "iptables": "controlplane.iptables.cmd",
    "demo": "controlplane.demo.cmd",
    "tag": "controlplane.ops.tag",
    "analyze": "controlplane.ops.analyze",
    "injector": "controlplane.ops.injectorlist",
    "check-inject": "controlplane.ops.checkinject",
    "version": "controlplane.ops.version",
}


def add_parser(sub: Any) -> None:
    """Add `serve`."""
    _serve_parser(sub)


def build_parser(commands: Iterable[str] = COMMANDS) -> argparse.ArgumentParser:
    """The parser with `commands` (all by default) as its subcommands."""
    parser = argparse.ArgumentParser(
        prog="meshplane",
        description="meshplane: a small, Istio-compatible service-mesh control plane.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        add: Callable[[Any], None] = importlib.import_module(COMMANDS[command]).add_parser
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(given[:1] if given[:1] and given[0] in COMMANDS else COMMANDS)
    if given[:1] == ["iptables"]:  # its values are read as istio-iptables reads them
        from controlplane.iptables.cmd import attach_values

        given = ["iptables", *attach_values(given[1:])]
    args = parser.parse_args(given)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"meshplane: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
