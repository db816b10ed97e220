"""What the demo mesh is: addresses, workloads, and the config-dir YAML that `meshplane serve` reads.

Address plan: workload number N (1-based) has a "pod IP" `<pod_prefix>.N` (the agent's instance and
bind address: Envoy's inbound listeners and ports 15020/15021/15090) and a "pod loopback"
`<loopback_prefix>.N` (the application's address, Envoy's admin port 15000 and, with interception
NONE, the outbound listeners). The control plane binds `control_plane` on Istio's ports. All three
must lie in 127.0.0.0/8, so the whole mesh runs on one machine without root.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import pathlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

NAMESPACE = "demo"
TRUST_DOMAIN = "cluster.local"
TLS_MODE_LABEL = "security.istio.io/tlsMode"

# Istio's control-plane ports, on the plan's control-plane address.
CONTROL_PLANE_PORTS: Mapping[str, int] = {
    "grpc": 15010,
    "secure-grpc": 15012,
    "webhook": 15017,
    "monitoring": 15014,
    "http": 8080,
}
ENVOY_ADMIN_PORT = 15000
AGENT_PORT = 15020
ENVOY_HEALTH_PORT = 15021
ENVOY_PROMETHEUS_PORT = 15090
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class PlanError(ValueError):
    """The address plan cannot be used; the message names the field and what to pass instead."""


class Role(enum.Enum):
    """What a workload's application does."""

    FRONTEND = "frontend"  # HTTP server that calls reviews steadily through its sidecar
    REVIEWS = "reviews"  # HTTP server answering with its version and the XFCC header it got
    GREETER = "greeter"  # gRPC server behind an Envoy sidecar
    GREETER_CLIENT = "greeter-client"  # proxyless gRPC client (xDS credentials, no Envoy)


@dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    name: str
    port: int
    port_name: str
    cluster_ip: str

    @property
    def hostname(self) -> str:
        return f"{self.name}.{NAMESPACE}.svc.cluster.local"


FRONTEND = ServiceSpec(name="frontend", port=8080, port_name="http", cluster_ip="10.96.80.10")
REVIEWS = ServiceSpec(name="reviews", port=9080, port_name="http", cluster_ip="10.96.80.11")
GREETER = ServiceSpec(name="greeter", port=7070, port_name="grpc", cluster_ip="10.96.80.12")
SERVICES = (FRONTEND, REVIEWS, GREETER)


def _prefix(value: str, *, field: str) -> str:
    parts = value.split(".")
    try:
        ipaddress.IPv4Address(f"{value}.1")
    except ValueError:
        parts = []
    if len(parts) != 3 or parts[0] != "127":
        raise PlanError(f"{field}: {value!r} must be three octets inside 127.0.0.0/8, like 127.0.10")
    return value


@dataclass(frozen=True, kw_only=True)
class AddressPlan:
    """Where the demo binds. Raises PlanError (naming the flag) for prefixes outside 127.0.0.0/8 or that overlap."""

    pod_prefix: str = "127.0.10"
    loopback_prefix: str = "127.0.11"
    control_plane: str = "127.0.100.1"

    def __post_init__(self) -> None:
        _prefix(self.pod_prefix, field="--pod-prefix")
        _prefix(self.loopback_prefix, field="--loopback-prefix")
        try:
            cp = ipaddress.IPv4Address(self.control_plane)
        except ValueError:
            cp = None
        if cp is None or not cp.is_loopback:
            raise PlanError(f"--control-plane: {self.control_plane!r} must be an IPv4 address in 127.0.0.0/8")
        if self.pod_prefix == self.loopback_prefix:
            raise PlanError(f"--loopback-prefix: {self.loopback_prefix!r} must differ from --pod-prefix")
        if self.control_plane.rpartition(".")[0] in (self.pod_prefix, self.loopback_prefix):
            raise PlanError(
                f"--control-plane: {self.control_plane!r} must lie outside {self.pod_prefix}.0/24 "
                f"and {self.loopback_prefix}.0/24"
            )

    def pod_ip(self, index: int) -> str:
        return f"{self.pod_prefix}.{index}"

    def loopback(self, index: int) -> str:
        return f"{self.loopback_prefix}.{index}"

    def control_plane_addr(self, name: str) -> str:
        """`host:port` of a control-plane server by its CONTROL_PLANE_PORTS name."""
        return f"{self.control_plane}:{CONTROL_PLANE_PORTS[name]}"


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One pod of the demo: its app, identity, addresses and the service it serves (if any)."""

    name: str  # the pod name
    index: int  # N in the address plan
    role: Role
    app: str
    version: str
    service_account: str
    service: ServiceSpec | None
    pod_ip: str
    loopback: str

    @property
    def proxyless(self) -> bool:
        return self.role is Role.GREETER_CLIENT

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.app, "version": self.version, TLS_MODE_LABEL: "istio"}

    @property
    def identity(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{self.service_account}"

    @property
    def proxy_name(self) -> str:
        """How the control plane names this workload's proxy (`<pod>.<namespace>`)."""
        return f"{self.name}.{NAMESPACE}"

    @property
    def caller(self) -> bool:
        """Whether the app sends steady traffic (and so has sent/failed counters and latencies)."""
        return self.role in (Role.FRONTEND, Role.GREETER_CLIENT)


ROLE_SERVICES: Mapping[Role, ServiceSpec | None] = {
    Role.FRONTEND: FRONTEND,
    Role.REVIEWS: REVIEWS,
    Role.GREETER: GREETER,
    Role.GREETER_CLIENT: None,
}
MAX_INDEX = 254  # workload N uses <prefix>.N


def workload(plan: AddressPlan, *, index: int, name: str, role: Role, version: str) -> Workload:
    """Workload number `index` of `plan`. Its app label and service account are its Service's name (the role's
    name when it serves none). Raises PlanError when the name is not a DNS label or the index has no address."""
    if not _DNS_LABEL.fullmatch(name):
        raise PlanError(f"workload name {name!r} must be a DNS label (lower-case letters, digits and '-')")
    if not _DNS_LABEL.fullmatch(version):
        raise PlanError(f"workload {name}: version {version!r} must be a DNS label, like v3")
    if not 1 <= index <= MAX_INDEX:
        raise PlanError(f"workload {name}: number {index} has no address: the plan holds workloads 1 to {MAX_INDEX}")
    service = ROLE_SERVICES[role]
    app = role.value if service is None else service.name
    return Workload(
        name=name,
        index=index,
        role=role,
        app=app,
        version=version,
        service_account=app,
        service=service,
        pod_ip=plan.pod_ip(index),
        loopback=plan.loopback(index),
    )


def workloads(plan: AddressPlan) -> tuple[Workload, ...]:
    """The demo's workloads, numbered from 1 in start order (servers before the callers that need them)."""
    specs = [
        ("reviews-v1", Role.REVIEWS, "v1"),
        ("reviews-v2", Role.REVIEWS, "v2"),
        ("greeter", Role.GREETER, "v1"),
        ("frontend", Role.FRONTEND, "v1"),
        ("greeter-client", Role.GREETER_CLIENT, "v1"),
    ]
    return tuple(
        workload(plan, index=index, name=name, role=role, version=version)
        for index, (name, role, version) in enumerate(specs, start=1)
    )


def labels_file(workload: Workload) -> str:
    """The pod's labels in the downward API's format: one `key="value"` line each."""
    return "".join(f'{key}="{value}"\n' for key, value in sorted(workload.labels.items()))


# -- config dir -------------------------------------------------------------------------------------


def _service(spec: ServiceSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": NAMESPACE, "labels": {"app": spec.name}},
        "spec": {
            "clusterIP": spec.cluster_ip,
            "selector": {"app": spec.name},
            "ports": [{"name": spec.port_name, "port": spec.port, "targetPort": spec.port}],
        },
    }


def _endpoint_slice(spec: ServiceSpec, backends: Sequence[Workload]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{spec.name}-demo",
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": spec.name},
        },
        "addressType": "IPv4",
        "ports": [{"name": spec.port_name, "port": spec.port}],
        "endpoints": [
            {
                "addresses": [w.pod_ip],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": w.name, "namespace": NAMESPACE},
            }
            for w in backends
        ],
    }


def _pod(workload: Workload) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": f"meshplane-demo/{workload.role.value}:1"}
    if workload.service is not None:
        container["ports"] = [{"name": workload.service.port_name, "containerPort": workload.service.port}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": workload.name, "namespace": NAMESPACE, "labels": workload.labels},
        "spec": {"serviceAccountName": workload.service_account, "containers": [container]},
        "status": {"podIP": workload.pod_ip, "phase": "Running"},
    }


_HEADERS = {
    "namespace.yaml": "The demo namespace and its mTLS policy. STRICT: the sidecars accept only mutual TLS.\n"
    "PERMISSIVE also accepts plaintext; the callers keep sending mTLS (auto mTLS), so traffic goes on.",
    "frontend.yaml": "frontend: calls reviews steadily through its sidecar.",
    "reviews.yaml": "reviews: one Service, two workloads (v1, v2). Remove an endpoint from the EndpointSlice\n"
    "and the frontend stops reaching that version; put it back and it returns.",
    "greeter.yaml": "greeter: a gRPC server behind an Envoy sidecar; greeter-client reaches it proxyless.",
    "greeter-client.yaml": "greeter-client: a proxyless gRPC client (no Envoy; grpcio's own xDS client).",
}


def config_file(workload: Workload) -> str:
    """The config dir file holding the workload's Pod (and its endpoint): its Service's file, else its own."""
    return f"{workload.name}.yaml" if workload.service is None else f"{workload.service.name}.yaml"


def config_documents(demo: Sequence[Workload], *, withdrawn: Collection[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """The config dir's files: file name -> YAML documents. One file per service, so each is easy to edit.

    Every workload has its Pod; the ones named in `withdrawn` have no endpoint in their Service's EndpointSlice
    (they still run, but get no new traffic)."""
    files: dict[str, list[dict[str, Any]]] = {
        "namespace.yaml": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": NAMESPACE},
                "spec": {"mtls": {"mode": "STRICT"}},
            },
        ]
    }
    for spec in SERVICES:
        backends = [w for w in demo if w.service == spec]
        serving = [w for w in backends if w.name not in withdrawn]
        files[f"{spec.name}.yaml"] = [_service(spec), _endpoint_slice(spec, serving), *map(_pod, backends)]
    for w in demo:
        if w.service is None:
            files[f"{w.name}.yaml"] = [_pod(w)]
    return files


def write_config_dir(
    directory: pathlib.Path,
    demo: Sequence[Workload],
    *,
    withdrawn: Collection[str] = (),
    only: Collection[str] | None = None,
) -> list[pathlib.Path]:
    """Write the config files (all, or the file names in `only`) into `directory` (created if missing); returns
    their paths. Each file is replaced atomically, so `meshplane serve` never reads half a file. OSError propagates.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, documents in config_documents(demo, withdrawn=withdrawn).items():
        if only is not None and name not in only:
            continue
        header = "".join(f"# {line}\n" for line in _HEADERS.get(name, "").splitlines())
        path = directory / name
        tmp = directory / f".{name}.tmp"  # hidden: the config source skips it
        tmp.write_text(header + yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
        os.replace(tmp, path)
        written.append(path)
    return written


# -- addresses the mesh binds ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Bind:
    host: str
    port: int
    what: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.what})"


def required_binds(plan: AddressPlan, demo: Sequence[Workload]) -> list[Bind]:
    """Every address:port the mesh will listen on, with who listens there."""
    binds = [
        Bind(host=plan.control_plane, port=port, what=f"control plane {name}")
        for name, port in CONTROL_PLANE_PORTS.items()
    ]
    for w in demo:
        binds.append(Bind(host=w.pod_ip, port=AGENT_PORT, what=f"{w.name} agent"))
        if w.proxyless:
            continue
        binds += [
            Bind(host=w.pod_ip, port=ENVOY_HEALTH_PORT, what=f"{w.name} Envoy health"),
            Bind(host=w.pod_ip, port=ENVOY_PROMETHEUS_PORT, what=f"{w.name} Envoy stats"),
            Bind(host=w.loopback, port=ENVOY_ADMIN_PORT, what=f"{w.name} Envoy admin"),
        ]
        for spec in SERVICES:
            if spec == w.service:
                binds.append(Bind(host=w.pod_ip, port=spec.port, what=f"{w.name} Envoy inbound"))
                binds.append(Bind(host=w.loopback, port=spec.port, what=f"{w.name} app"))
            else:
                binds.append(Bind(host=w.loopback, port=spec.port, what=f"{w.name} Envoy outbound to {spec.name}"))
    return binds
