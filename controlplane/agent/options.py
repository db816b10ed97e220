"""What the agent is told: flags, each defaulting to the env var the injected container gets.

`AgentOptions` is filled once at start by `from_args`; every error names the flag (and the env var
it came from) and what a good value looks like. See docs/agent.md for the table of flags.
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.jsontext import MAX_ENV_JSON_DEPTH, load_json
from controlplane.literals import (
    INT32_MAX,
    K8S_LABEL,
    K8S_SUBDOMAIN,
    LABEL_MAX,
    LABEL_RULE,
    SUBDOMAIN_MAX,
    SUBDOMAIN_RULE,
    boolean,
    duration,
    host_port,
    ip_address,
    natural,
)

DEFAULT_DISCOVERY = "istiod.istio-system.svc:15012"
DEFAULT_ISTIOD_SAN = "istiod.istio-system.svc"
KEY_ALGORITHMS = ("ecdsa-p256", "rsa-2048")
NODE_TYPES = ("sidecar", "router")
INTERCEPTION_MODES = ("REDIRECT", "NONE")  # not Istio's TPROXY: meshplane's istio-init has no TPROXY rules
STATUS_PORT = 15020
ADMIN_PORT = 15000
DEFAULT_CONCURRENCY = 2


class OptionsError(ValueError):
    """A flag or env var the agent cannot use; the message names it and what is expected."""


@dataclass(frozen=True, kw_only=True)
class AgentOptions:
    node_type: str
    domain: str
    discovery_address: str
    ca_address: str
    istiod_san: str
    pod_name: str
    namespace: str
    instance_ip: str
    service_account: str
    trust_domain: str
    token_file: pathlib.Path
    root_cert: pathlib.Path
    labels_file: pathlib.Path
    proxy_dir: pathlib.Path
    sds_socket: pathlib.Path
    key_algorithm: str
    cert_ttl: float
    loopback_address: str
    bind_address: str
    envoy: str | None
    drain_duration: float
    concurrency: int  # Envoy's worker threads, 0 one per core: PROXY_CONFIG concurrency, else 2
    proxyless: bool
    grpc_bootstrap: pathlib.Path
    output_certs: pathlib.Path
    interception_mode: str
    proxy_log_level: str
    proxy_component_log_level: str
    delta_xds: bool  # Envoy asks for incremental (Delta) ADS: env ISTIO_DELTA_XDS (Go boolean), true when unset
    status_port: int = STATUS_PORT
    app_probers: str = ""  # ISTIO_KUBE_APP_PROBERS (JSON), as the injector rewrote the app's probes
    prometheus_annotations: str = ""  # ISTIO_PROMETHEUS_ANNOTATIONS (JSON): where the app's own metrics are
    proxy_config: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)  # from ISTIO_META_*, keys without the prefix

    @property
    def identity(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def node_id(self) -> str:
        return f"{self.node_type}~{self.instance_ip}~{self.pod_name}.{self.namespace}~{self.domain}"

    @property
    def xds_socket(self) -> pathlib.Path:
        """Proxyless: where the agent's xDS proxy listens for the gRPC clients (Istio's `<proxy-dir>/XDS`)."""
        return self.proxy_dir / "XDS"


def parse_duration(text: str, *, name: str, zero: bool = False) -> float:
    """`30s`, `5m`, `24h`, `1h30m`, `500ms` (any Go duration) or a plain number of seconds -> seconds,
    positive (or 0 when `zero`). Raises OptionsError naming `name`."""
    seconds = duration(text.strip(), bare_seconds=True)
    if seconds is None:
        raise OptionsError(f"{name}: {text!r} is not a duration (examples: 30s, 5m, 24h, 1h30m)")
    if seconds < 0 or (seconds == 0 and not zero):
        raise OptionsError(f"{name}: {text!r} must be {'0 or more' if zero else 'positive'}")
    return seconds


def _ip(text: str, *, name: str) -> str:
    """An address without a zone: the control plane refuses one in the node's id and metadata."""
    try:
        return str(ip_address(text.strip()))
    except ValueError as exc:
        raise OptionsError(f"{name}: {exc}") from None


def _host_port(text: str, *, name: str) -> str:
    try:
        host_port(text.strip())
    except ValueError as exc:
        raise OptionsError(f"{name}: {text!r} {exc}") from None
    return text.strip()


def _kube_name(text: str, *, name: str, subdomain: bool = False) -> str:
    """A namespace name (a DNS-1123 label) or, with `subdomain`, a service account name, as Kubernetes
    and the CA take them."""
    pattern, limit, rule = (
        (K8S_SUBDOMAIN, SUBDOMAIN_MAX, SUBDOMAIN_RULE) if subdomain else (K8S_LABEL, LABEL_MAX, LABEL_RULE)
    )
    if len(text) > limit or not pattern.fullmatch(text):
        raise OptionsError(f"{name}: {text!r} is not {rule}")
    return text


def default_istiod_san(discovery_address: str) -> str:
    """The DNS name to verify on the discovery address: its host when that is a name, else istiod's."""
    host = discovery_address.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return DEFAULT_ISTIOD_SAN


def proxy_config(env: Mapping[str, str]) -> dict[str, Any]:
    """`PROXY_CONFIG` (JSON object) as the injector writes it; empty when unset."""
    text = env.get("PROXY_CONFIG", "").strip()
    if not text:
        return {}
    try:
        value = load_json(text, max_depth=MAX_ENV_JSON_DEPTH)
    except ValueError as exc:
        raise OptionsError(f"env PROXY_CONFIG: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise OptionsError("env PROXY_CONFIG: must be a JSON object")
    return value


def _concurrency(value: Any) -> int:
    """PROXY_CONFIG `concurrency` (an Int32Value: Envoy's worker threads, 0 one per core), 2 when unset."""
    if value is None:
        return DEFAULT_CONCURRENCY
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT32_MAX:
        raise OptionsError(f"env PROXY_CONFIG concurrency: {json.dumps(value)} is not a whole number 0-{INT32_MAX}")
    return value


# Node metadata the control plane reads as text and the agent sends as the environment gives it
# (it sets NAMESPACE, SERVICE_ACCOUNT, LABELS, INSTANCE_IPS, INTERCEPTION_MODE and the rest itself).
TEXT_META = ("GENERATOR", "CLUSTER_ID")


def node_meta(env: Mapping[str, str]) -> dict[str, Any]:
    """Every `ISTIO_META_<KEY>` as metadata `<KEY>`; values that are JSON objects or arrays are decoded."""
    meta: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith("ISTIO_META_") or len(name) == len("ISTIO_META_"):
            continue
        key = name[len("ISTIO_META_") :]
        decoded: Any = value
        if value[:1] in "[{":
            try:
                decoded = load_json(value, max_depth=MAX_ENV_JSON_DEPTH)
            except ValueError:
                decoded = value
        meta[key] = decoded
    return meta


def delta_xds(env: Mapping[str, str]) -> bool:
    """`ISTIO_DELTA_XDS`: true (Istio's default) or false (State of the World). Raises OptionsError."""
    return _env_boolean(env, "ISTIO_DELTA_XDS", default=True)


def _env_boolean(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    """A boolean environment variable as Istio reads one (Go's spellings: `1`, `t`, `true`, `0`, `f`, ...)."""
    text = env.get(name, "").strip()
    if not text:
        return default
    value = boolean(text)
    if value is None:
        raise OptionsError(f"env {name}: {text!r} is not true or false (nor 1, t, 0 or f)")
    return value


def from_args(args: Any, env: Mapping[str, str]) -> AgentOptions:
    """Check and combine parsed flags (whose defaults already came from `env`). Raises OptionsError."""
    pc = proxy_config(env)
    discovery = _host_port(args.discovery_address or pc.get("discoveryAddress") or DEFAULT_DISCOVERY,
                           name="--discovery-address")  # fmt: skip
    ca_address = _host_port(args.ca_addr or discovery, name="--ca-addr (env CA_ADDR)")
    for flag, value in (("--pod-name (env POD_NAME)", args.pod_name), ("--pod-namespace (env POD_NAMESPACE)",
                        args.pod_namespace), ("--instance-ip (env INSTANCE_IP)", args.instance_ip)):  # fmt: skip
        if not value:
            raise OptionsError(f"{flag} is required")
    _kube_name(args.pod_name, name="--pod-name (env POD_NAME)", subdomain=True)  # in the node id
    namespace = _kube_name(args.pod_namespace, name="--pod-namespace (env POD_NAMESPACE)")
    service_account = _kube_name(
        args.service_account or "default", name="--service-account (env SERVICE_ACCOUNT)", subdomain=True
    )
    drain_text = args.drain_duration or str(pc.get("terminationDrainDuration") or "5s")
    meta = node_meta(env)
    for key in TEXT_META:
        if not isinstance(meta.get(key, ""), str):
            raise OptionsError(
                f"env ISTIO_META_{key}: {env[f'ISTIO_META_{key}']!r} is JSON; the control plane reads text"
            )
    proxyless = meta.get("GENERATOR") == "grpc" or _env_boolean(env, "DISABLE_ENVOY", default=False)
    interception = str(meta.get("INTERCEPTION_MODE") or "REDIRECT")
    if interception not in INTERCEPTION_MODES:
        unsupported = " (TPROXY is not supported)" if interception == "TPROXY" else ""
        raise OptionsError(
            f"env ISTIO_META_INTERCEPTION_MODE: {interception!r} is not one of REDIRECT, NONE{unsupported}"
        )
    if args.node_type not in NODE_TYPES:
        raise OptionsError(f"proxy type {args.node_type!r} is not sidecar or router")
    status_port = natural(str(args.status_port).strip())
    if status_port is None or not 0 < status_port < 65536:
        raise OptionsError(f"--status-port (env MESHPLANE_STATUS_PORT): {args.status_port!r} is not a port 1-65535")
    return AgentOptions(
        node_type=args.node_type,
        domain=args.domain or f"{namespace}.svc.cluster.local",
        discovery_address=discovery,
        ca_address=ca_address,
        istiod_san=args.istiod_san or default_istiod_san(discovery),
        pod_name=args.pod_name,
        namespace=namespace,
        instance_ip=_ip(args.instance_ip, name="--instance-ip (env INSTANCE_IP)"),
        service_account=service_account,
        trust_domain=args.trust_domain or "cluster.local",
        token_file=pathlib.Path(args.token_file),
        root_cert=pathlib.Path(args.root_cert),
        labels_file=pathlib.Path(args.labels_file),
        proxy_dir=pathlib.Path(args.proxy_dir),
        sds_socket=pathlib.Path(args.sds_socket),
        key_algorithm=args.key_algorithm,
        cert_ttl=parse_duration(args.cert_ttl, name="--cert-ttl (env SECRET_TTL)"),
        loopback_address=_ip(args.loopback_address, name="--loopback-address (env ISTIO_META_LOOPBACK_ADDRESS)"),
        bind_address=_ip(args.bind_address, name="--bind-address (env MESHPLANE_BIND_ADDRESS)"),
        envoy=args.envoy or None,
        drain_duration=parse_duration(
            drain_text, name="--drain-duration (PROXY_CONFIG terminationDrainDuration)", zero=True
        ),
        concurrency=_concurrency(pc.get("concurrency")),
        proxyless=proxyless,
        grpc_bootstrap=pathlib.Path(args.grpc_xds_bootstrap),
        output_certs=pathlib.Path(args.output_certs),
        interception_mode=interception,
        proxy_log_level=args.proxy_log_level,
        proxy_component_log_level=args.proxy_component_log_level,
        delta_xds=delta_xds(env),
        status_port=status_port,
        app_probers=env.get("ISTIO_KUBE_APP_PROBERS", ""),
        prometheus_annotations=env.get("ISTIO_PROMETHEUS_ANNOTATIONS", ""),
        proxy_config=pc,
        meta=meta,
    )
