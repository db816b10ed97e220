"""The Envoy bootstrap the agent writes before starting Envoy (Envoy v3 JSON).

Names follow Istio's sidecar bootstrap so that configuration pushed by any Istio-compatible control
plane, dashboards and operators' habits keep working:

- ADS (State of the World, gRPC, v3) through the static cluster `xds-grpc`; CDS and LDS come over
  ADS with `initial_fetch_timeout: 0s`, so Envoy stays initializing (not ready) until it has them.
- `xds-grpc` speaks HTTP/2 over TLS to the discovery address. Envoy's client certificate is the SDS
  secret `default`; the server is verified against the SDS secret `ROOTCA` and must carry the DNS
  SAN `istiod_san` (also sent as SNI). Both secrets come from the agent over the Unix socket
  `sds_socket` (cluster `sds-grpc`).
- Static listeners `<bind>_15021` (`/healthz/ready`, forwarded to the agent's status server, cluster
  `agent`) and `<bind>_15090` (`/stats/prometheus`, forwarded to Envoy's admin, cluster
  `prometheus_stats`); the admin API on `loopback_address:15000` with its access log discarded.

Unlike Istio, which proxies xDS through the agent, Envoy here dials the discovery server directly.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.literals import DNS_NAME, host_port, ip_address

XDS_CLUSTER = "xds-grpc"
SDS_CLUSTER = "sds-grpc"
AGENT_CLUSTER = "agent"
PROMETHEUS_CLUSTER = "prometheus_stats"
CERTIFICATE_SECRET = "default"
ROOT_SECRET = "ROOTCA"
READY_PATH = "/healthz/ready"
# How fast Envoy re-opens the ADS stream after losing the control plane (Envoy's default backs off
# 500 ms doubling to 30 s, so a restarted control plane could wait half a minute for its proxies).
# Jittered by Envoy; the cap keeps resync after a restart within a few seconds.
ADS_RETRY = {"retry_back_off": {"base_interval": "0.5s", "max_interval": "3s"}}
PROMETHEUS_PATH = "/stats/prometheus"

_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL
_TYPE = "type.googleapis.com/envoy."
_HTTP2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": _TYPE + "extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


@dataclass(frozen=True, kw_only=True)
class BootstrapParams:
    """Everything the bootstrap depends on. Construction validates every field.

    `cluster` is Istio's service cluster, `<app label or workload name>.<namespace>`; `metadata` is
    the node metadata, already assembled by the caller (any JSON object). `discovery_address` is
    `host:port` (`[v6]:port` for IPv6); `istiod_san` is the DNS name the discovery server's
    certificate must carry. Admin binds on `loopback_address`; the readiness and Prometheus
    listeners on `bind_address`. The agent's status server listens on `bind_address:status_port`
    (reached on `loopback_address` when `bind_address` is a wildcard).

    Raises ValueError naming the field and what a good value looks like.
    """

    node_id: str
    cluster: str
    metadata: Mapping[str, Any]
    discovery_address: str
    istiod_san: str
    sds_socket: str
    loopback_address: str = "127.0.0.1"
    bind_address: str = "0.0.0.0"
    admin_port: int = 15000
    readiness_port: int = 15021
    prometheus_port: int = 15090
    status_port: int = 15020
    delta: bool = True  # incremental ADS (DELTA_GRPC), Istio's default; False: State of the World

    def __post_init__(self) -> None:
        for name in ("node_id", "cluster"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"{name} is empty: the Envoy node needs it (see docs/agent.md, Node)")
        discovery_host_port(self.discovery_address)
        if not self.istiod_san:
            raise ValueError(
                "istiod_san is empty: give the DNS name the discovery server's certificate carries "
                "(e.g. istiod.istio-system.svc)"
            )
        if not DNS_NAME.fullmatch(self.istiod_san):
            raise ValueError(f"istiod_san {self.istiod_san!r} is not a DNS name (e.g. istiod.istio-system.svc)")
        if not self.sds_socket:
            raise ValueError("sds_socket is empty: give the path of the agent's SDS Unix socket")
        if len(os.fsencode(self.sds_socket)) > _UNIX_PATH_MAX:
            raise ValueError(
                f"sds_socket {self.sds_socket!r} is {len(os.fsencode(self.sds_socket))} bytes long; "
                f"Unix socket paths are limited to {_UNIX_PATH_MAX} bytes: choose a shorter path"
            )
        for name in ("loopback_address", "bind_address"):
            try:
                ipaddress.ip_address(getattr(self, name))
            except ValueError:
                raise ValueError(f"{name} {getattr(self, name)!r} is not an IP address (e.g. 127.0.0.1)") from None
        if ipaddress.ip_address(self.loopback_address).is_unspecified:
            raise ValueError(
                f"loopback_address {self.loopback_address!r} is a wildcard: Envoy's admin API must listen on "
                "one local address (e.g. 127.0.0.1)"
            )
        ports = {
            name: getattr(self, name) for name in ("admin_port", "readiness_port", "prometheus_port", "status_port")
        }
        for name, port in ports.items():
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"{name} {port!r} is not a port number (1-65535)")
        if len(set(ports.values())) < len(ports):
            raise ValueError(f"ports must differ: {', '.join(f'{k}={v}' for k, v in ports.items())}")
        try:
            json.dumps(dict(self.metadata), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata is not a JSON object: {exc}") from None


def discovery_host_port(address: str) -> tuple[str, int]:
    """Split `host:port` or `[v6]:port` (see `literals.host_port`). Raises ValueError naming `discovery_address`."""
    try:
        return host_port(address)
    except ValueError as exc:
        raise ValueError(f"discovery_address {address!r} {exc}") from None


def render(params: BootstrapParams) -> dict[str, Any]:
    """The bootstrap as a JSON-ready dict (no I/O; `params` is already valid)."""
    host, port = discovery_host_port(params.discovery_address)
    status_host = params.bind_address
    if ipaddress.ip_address(status_host).is_unspecified:
        status_host = params.loopback_address
    return {
        "node": {"id": params.node_id, "cluster": params.cluster, "metadata": dict(params.metadata)},
        "admin": {
            "access_log": [
                {
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": _TYPE + "extensions.access_loggers.file.v3.FileAccessLog",
                        "path": "/dev/null",
                    },
                }
            ],
            "address": _socket(params.loopback_address, params.admin_port),
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if params.delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER, "retry_policy": ADS_RETRY}}],
            },
            "cds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                _xds_cluster(host, port, params.istiod_san),
                _cluster(SDS_CLUSTER, {"pipe": {"path": params.sds_socket}}, connect_timeout="1s", http2=True),
                _cluster(AGENT_CLUSTER, _socket(status_host, params.status_port)),
                _cluster(PROMETHEUS_CLUSTER, _socket(params.loopback_address, params.admin_port)),
            ],
            "listeners": [
                _listener(params.bind_address, params.readiness_port, "agent", READY_PATH, AGENT_CLUSTER),
                _listener(params.bind_address, params.prometheus_port, "stats", PROMETHEUS_PATH, PROMETHEUS_CLUSTER),
            ],
        },
    }


def write(params: BootstrapParams, path: pathlib.Path) -> None:
    """Render and write the bootstrap atomically (temporary file in the same directory, then rename),
    so Envoy never reads a half-written file. Creates the directory. Raises OSError when it cannot write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(render(params), indent=2).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _cluster(
    name: str, address: dict[str, Any], *, connect_timeout: str = "0.250s", http2: bool = False
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = _HTTP2
    return cluster


def _sds(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
            },
            "resource_api_version": "V3",
        },
    }


def _xds_cluster(host: str, port: int, san: str) -> dict[str, Any]:
    cluster = _cluster(XDS_CLUSTER, _socket(host, port), connect_timeout="1s")
    if not _is_ip(host):
        cluster["type"] = "STRICT_DNS"
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            **_HTTP2["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
            # A new TCP connection for every ADS stream, so a reconnecting proxy can land on another
            # discovery server replica behind the same address (as Istio does).
            "common_http_protocol_options": {"max_requests_per_connection": 1},
        }
    }
    cluster["upstream_connection_options"] = {"tcp_keepalive": {"keepalive_time": 300}}
    cluster["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TYPE + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": san,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [_sds(CERTIFICATE_SECRET)],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": san}}]
                    },
                    "validation_context_sds_secret_config": _sds(ROOT_SECRET),
                },
            },
        },
    }
    return cluster


def _listener(address: str, port: int, stat_prefix: str, prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "name": f"{address}_{port}",
        "address": _socket(address, port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _TYPE + "extensions.filters.network.http_connection_manager.v3."
                            "HttpConnectionManager",
                            "codec_type": "AUTO",
                            "stat_prefix": stat_prefix,
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "backend",
                                        "domains": ["*"],
                                        "routes": [{"match": {"prefix": prefix}, "route": {"cluster": cluster}}],
                                    }
                                ]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": _TYPE + "extensions.filters.http.router.v3.Router"},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
