"""Settings of `meshplane serve`: one frozen dataclass, filled from flags or env vars.

Every flag has an environment variable `MESHPLANE_<FLAG>` (dashes become underscores); the flag
wins when both are given. Addresses are `host:port`; an empty host means all interfaces.
"""

from __future__ import annotations

import dataclasses
import pathlib
from dataclasses import dataclass

from controlplane.literals import whole_number

DEFAULT_REVISION = "default"
IGNORED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "local-path-storage"})


class SettingsError(ValueError):
    """A flag or env var has a value meshplane cannot use; the message names it."""


@dataclass(frozen=True, kw_only=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, field: str) -> Address:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise SettingsError(f"{field}: {text!r} is not host:port (example: 127.0.0.1:15017)")
        port = whole_number(port_text)
        if port is None:
            raise SettingsError(f"{field}: port {port_text!r} in {text!r} is not a number")
        if not 0 <= port <= 65535:
            raise SettingsError(f"{field}: port {port} in {text!r} is out of range 0-65535")
        return cls(host=host.strip("[]"), port=port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def bind_host(self) -> str:
        return self.host or "0.0.0.0"


def revision_suffix(revision: str) -> str:
    """Istio's naming: the `default` revision has no suffix (`istiod`), others do (`istiod-canary`)."""
    return "" if revision == DEFAULT_REVISION else f"-{revision}"


@dataclass(frozen=True, kw_only=True)
class Settings:
    revision: str = DEFAULT_REVISION
    namespace: str = "istio-system"
    kubeconfig: pathlib.Path | None = None
    config_dir: pathlib.Path | None = None
    state_dir: pathlib.Path = pathlib.Path(".meshplane")
    grpc_addr: Address = Address(host="", port=15010)
    secure_grpc_addr: Address = Address(host="", port=15012)
    webhook_addr: Address = Address(host="", port=15017)
    monitoring_addr: Address = Address(host="", port=15014)
    http_addr: Address = Address(host="127.0.0.1", port=8080)
    trust_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    serving_hosts: tuple[str, ...] = ()
    log_format: str = "text"
    log_level: str = "info"
    grace_period: float = 10.0
    max_workload_cert_ttl: float = 90 * 86400.0  # seconds; the CA refuses longer workload certificates
    ca_key_algorithm: str = "ecdsa-p256"  # key of a newly created self-signed root
    allow_new_root: bool = False  # local mode: create a new root although a trust bundle exists without its key
    max_streams_per_client: int = 100  # open xDS streams one client address may have, both ports together
    max_request_bytes: int = 4 * 1024 * 1024  # the largest gRPC request message either port takes (Istio's)
    max_xds_connections: int | None = (
        None  # connections each gRPC port holds open at once; None: what the open-files limit allows
    )
    # seconds a client connection to either xDS/CA port is kept before it is asked to reconnect (Istio's
    # keepaliveMaxServerConnectionAge, 30m in its chart), so proxies spread over every replica; None: never
    max_connection_age: float | None = 1800.0
    # seconds a client connection to either gRPC port is kept with no call open on it (a proxy's xDS stream
    # is always open; a CA client's connection idles between rotations, junk ones for ever); None: for ever
    max_connection_idle: float | None = 300.0
    ca_workers: int | None = None  # CA signing processes; None: chosen from the usable cores, 0: the event loop signs

    @property
    def local_mode(self) -> bool:
        return self.config_dir is not None

    @property
    def istiod_service(self) -> str:
        """The Service name of this revision: `istiod` or `istiod-<rev>`."""
        return f"istiod{revision_suffix(self.revision)}"

    @property
    def injector_configmap(self) -> str:
        return f"istio-sidecar-injector{revision_suffix(self.revision)}"

    @property
    def mesh_configmap(self) -> str:
        return f"istio{revision_suffix(self.revision)}"

    @property
    def discovery_address(self) -> str:
        return f"{self.istiod_service}.{self.namespace}.svc:15012"

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
