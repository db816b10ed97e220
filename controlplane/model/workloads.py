"""Workloads: pods, with what the mesh needs of them (labels, identity, address, sidecar).

A pod has a sidecar when it carries the injector's marks: the `security.istio.io/tlsMode: istio`
label or the `sidecar.istio.io/status` annotation, or a container named `istio-proxy`. Such a pod
accepts mesh mTLS, so clients send it ISTIO_MUTUAL traffic (auto mTLS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from controlplane.model import fields as f

# What `Workload.from_object` reads of a Pod, and all of it (`pod_fields_read`).
_POD_METADATA = ("name", "namespace", "labels", "annotations")
_POD_SPEC = ("serviceAccountName", "nodeName")
_POD_CONTAINERS = ("initContainers", "containers")
_POD_CONTAINER = ("name", "ports")
_POD_STATUS = ("podIP", "podIPs", "phase")

TLS_MODE_LABEL = "security.istio.io/tlsMode"
STATUS_ANNOTATION = "sidecar.istio.io/status"
PROXY_CONTAINER = "istio-proxy"
NO_PORTS: Mapping[str, int] = MappingProxyType({})  # shared by every workload without named container ports


@dataclass(frozen=True, kw_only=True)
class Workload:
    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=f.empty_labels)
    service_account: str = "default"
    ips: tuple[str, ...] = ()
    node_name: str = ""
    phase: str = ""
    sidecar: bool = False
    container_ports: Mapping[str, int] = field(default_factory=lambda: NO_PORTS)

    @property
    def ip(self) -> str:
        return self.ips[0] if self.ips else ""

    @property
    def identity(self) -> tuple[str, str]:
        return self.namespace, self.service_account

    def resolve_port(self, target: int | str) -> int | None:
        """A service targetPort on this pod: a number as is, a name through the containers' ports."""
        if isinstance(target, int):
            return target
        return self.container_ports.get(target)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Workload:
        """Parse a v1 Pod. Raises `ObjectError` naming the bad field."""
        namespace, name = f.metadata(obj)
        meta = f.mapping(obj.get("metadata"), "metadata")
        labels = f.labels(meta.get("labels"), "metadata.labels")
        annotations = f.labels(meta.get("annotations"), "metadata.annotations")
        spec = f.mapping(obj.get("spec"), "spec")
        status = f.mapping(obj.get("status"), "status")
        names: list[str] = []
        ports: dict[str, int] = {}
        for group in ("initContainers", "containers"):
            for index, raw in enumerate(f.sequence(spec.get(group), f"spec.{group}")):
                path = f"spec.{group}[{index}]"
                container = f.mapping(raw, path)
                names.append(f.string(container.get("name"), f"{path}.name"))
                for port_index, raw_port in enumerate(f.sequence(container.get("ports"), f"{path}.ports")):
                    port_path = f"{path}.ports[{port_index}]"
                    port = f.mapping(raw_port, port_path)
                    number = f.port_number(port.get("containerPort"), f"{port_path}.containerPort")
                    port_name = f.string(port.get("name"), f"{port_path}.name", default="")
                    if port_name:
                        ports[port_name] = number
        ips: list[str] = []
        if status.get("podIP") is not None:
            ips.append(f.ip_address(status.get("podIP"), "status.podIP"))
        for index, raw in enumerate(f.sequence(status.get("podIPs"), "status.podIPs")):
            item = f.mapping(raw, f"status.podIPs[{index}]")
            ip = f.ip_address(item.get("ip"), f"status.podIPs[{index}].ip")
            if ip not in ips:
                ips.append(ip)
        sidecar = labels.get(TLS_MODE_LABEL) == "istio" or STATUS_ANNOTATION in annotations or PROXY_CONTAINER in names
        return cls(
            name=name,
            namespace=namespace,
            labels=labels,
            service_account=f.string(spec.get("serviceAccountName"), "spec.serviceAccountName", default="default")
            or "default",
            ips=tuple(ips),
            node_name=f.string(spec.get("nodeName"), "spec.nodeName", default=""),
            phase=f.string(status.get("phase"), "status.phase", default=""),
            sidecar=sidecar,
            container_ports=MappingProxyType(ports) if ports else NO_PORTS,
        )


def pod_fields_read(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a v1 Pod that `Workload.from_object` reads, and nothing else: what the kube source keeps.

    A Pod in a cluster is mostly what meshplane never reads (volumes, env, resources, probes, container
    statuses, conditions); kept whole, 40,000 of them are millions of objects for every full pass of
    the garbage collector (a pause of the event loop), and every status update a model rebuild.
    A field of the wrong type is kept as it is, so `from_object` reports it as it would on the whole Pod:
    `Workload.from_object(pod_fields_read(pod))` equals `Workload.from_object(pod)`, or raises the same
    error."""
    kept: dict[str, Any] = {k: obj[k] for k in ("apiVersion", "kind") if k in obj}
    for name, keys in (("metadata", _POD_METADATA), ("spec", _POD_SPEC), ("status", _POD_STATUS)):
        if name not in obj:
            continue
        part = obj[name]
        if not isinstance(part, Mapping):
            kept[name] = part
            continue
        kept[name] = {k: part[k] for k in keys if k in part}
        if name == "spec":
            for group in _POD_CONTAINERS:
                if group in part:
                    kept[name][group] = _containers_read(part[group])
    return kept


def _containers_read(containers: Any) -> Any:
    if not isinstance(containers, list):
        return containers
    return [{k: c[k] for k in _POD_CONTAINER if k in c} if isinstance(c, Mapping) else c for c in containers]
