"""The `Table` form (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`) kubectl prints.

Each resource has a list of `Column`s; `cells` compute the row for one object. Column names are
the server's (kubectl upper-cases them); priority 1 columns are the extra ones of `-o wide`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.kubesim import decoding
from tests.kubesim.selectors import format_label_selector

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    cell: Callable[[Obj, datetime.datetime], Any]
    priority: int = 0
    format: str = ""
    description: str = ""

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description or f"{self.name} of the object",
            "priority": self.priority,
        }


def human_duration(seconds: float) -> str:
    """Kubernetes' short age format: 45s, 2m5s, 12m, 3h4m, 20h, 5d2h, 30d, 2y30d, 9y."""
    secs = int(seconds)
    if secs < -1:
        return "<invalid>"
    if secs < 0:
        return "0s"
    if secs < 120:
        return f"{secs}s"
    minutes = secs // 60
    if minutes < 10:
        rest = secs % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = secs // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y" if days == 0 else f"{years}y{days}d"
    return f"{hours // 24 // 365}y"


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def age(obj: Obj, now: datetime.datetime) -> str:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    return human_duration((now - parse_time(stamp)).total_seconds())


def _name(obj: Obj, _: datetime.datetime) -> str:
    return str(obj["metadata"]["name"])


NAME = Column("Name", "string", _name, format="name", description="Name must be unique within a namespace.")
AGE = Column("Age", "string", age, description="CreationTimestamp of the object.")


def _spec(obj: Obj) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def _status(obj: Obj) -> Mapping[str, Any]:
    return obj.get("status") or {}


@dataclass(frozen=True)
class PodRow:
    ready: str
    status: str
    restarts: str


def _pod_waiting_or_terminated(state: Mapping[str, Any], prefix: str = "") -> str:
    """The STATUS text of a container that is not running ("" when it is)."""
    waiting, terminated = state.get("waiting"), state.get("terminated")
    if waiting and waiting.get("reason"):
        return prefix + str(waiting["reason"])
    if terminated:
        if terminated.get("reason"):
            return prefix + str(terminated["reason"])
        if terminated.get("signal"):
            return f"{prefix}Signal:{terminated['signal']}"
        return f"{prefix}ExitCode:{terminated.get('exitCode', 0)}"
    return ""


def pod_row(obj: Obj, now: datetime.datetime) -> PodRow:
    """READY, STATUS and RESTARTS as kubectl's pod printer computes them (native sidecars included)."""
    spec, status = _spec(obj), _status(obj)
    phase = str(status.get("phase") or "")
    reason = str(status.get("reason") or phase)
    sidecars = {str(c.get("name")) for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"}
    total = len(spec.get("containers") or []) + len(sidecars)
    ready = restarts = sidecar_restarts = 0
    last_restart = sidecar_last_restart = ""
    initializing = False
    init_statuses = list(status.get("initContainerStatuses") or [])
    for index, cs in enumerate(init_statuses):
        restarts += int(cs.get("restartCount", 0))
        finished = ((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt") or ""
        last_restart = max(last_restart, finished)
        state = cs.get("state") or {}
        if cs.get("name") in sidecars:
            sidecar_restarts += int(cs.get("restartCount", 0))
            sidecar_last_restart = max(sidecar_last_restart, finished)
        if state.get("terminated") and int(state["terminated"].get("exitCode", 0)) == 0:
            continue
        if cs.get("name") in sidecars and cs.get("started"):
            ready += bool(cs.get("ready"))
            continue
        waiting_reason = (state.get("waiting") or {}).get("reason")
        if state.get("terminated") or (waiting_reason and waiting_reason != "PodInitializing"):
            reason = _pod_waiting_or_terminated(state, "Init:")
        else:
            reason = f"Init:{index}/{len(spec.get('initContainers') or [])}"
        initializing = True
        break
    conditions = {str(c.get("type")): c.get("status") for c in status.get("conditions") or []}
    if not initializing or conditions.get("Initialized") == "True":
        restarts, last_restart = sidecar_restarts, sidecar_last_restart
        running = False
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += int(cs.get("restartCount", 0))
            finished = ((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt") or ""
            last_restart = max(last_restart, finished)
            state = cs.get("state") or {}
            text = _pod_waiting_or_terminated(state)
            if text:
                reason = text
            elif cs.get("ready") and state.get("running"):
                running = True
                ready += 1
        if reason == "Completed" and running:
            reason = "Running" if conditions.get("Ready") == "True" else "NotReady"
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif phase not in ("Succeeded", "Failed"):
            reason = "Terminating"
    shown = str(restarts)
    if restarts and last_restart:
        shown = f"{restarts} ({human_duration((now - parse_time(last_restart)).total_seconds())} ago)"
    return PodRow(ready=f"{ready}/{total}", status=reason, restarts=shown)


def _or_none(value: Any) -> str:
    return str(value) if value else "<none>"


def _service_ports(obj: Obj, _: datetime.datetime) -> str:
    parts = []
    for port in _spec(obj).get("ports") or []:
        node = f":{port['nodePort']}" if port.get("nodePort") else ""
        parts.append(f"{port.get('port')}{node}/{port.get('protocol', 'TCP')}")
    return ",".join(parts) or "<none>"


def _service_external(obj: Obj, _: datetime.datetime) -> str:
    spec = _spec(obj)
    if spec.get("type") == "ExternalName":
        return str(spec.get("externalName", "<none>"))
    ips = list(spec.get("externalIPs") or [])
    for ingress in (_status(obj).get("loadBalancer") or {}).get("ingress") or []:
        ips.append(ingress.get("ip") or ingress.get("hostname"))
    if ips:
        return ",".join(str(ip) for ip in ips)
    return "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"


def _service_selector(obj: Obj, _: datetime.datetime) -> str:
    selector = _spec(obj).get("selector") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>"


def _template_containers(obj: Obj) -> list[Mapping[str, Any]]:
    return list(((_spec(obj).get("template") or {}).get("spec") or {}).get("containers") or [])


def _containers(obj: Obj, _: datetime.datetime) -> str:
    return ",".join(str(c.get("name")) for c in _template_containers(obj))


def _images(obj: Obj, _: datetime.datetime) -> str:
    return ",".join(str(c.get("image")) for c in _template_containers(obj))


def _selector(obj: Obj, _: datetime.datetime) -> str:
    return format_label_selector(_spec(obj).get("selector"))


def _slice_ports(obj: Obj, _: datetime.datetime) -> str:
    ports = obj.get("ports")
    if not ports:
        return "<unset>"
    return ",".join(str(p["port"]) if p.get("port") is not None else "<unset>" for p in ports)


def _slice_endpoints(obj: Obj, _: datetime.datetime) -> str:
    addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
    if not addresses:
        return "<none>"
    shown = ",".join(addresses[:3])
    return shown if len(addresses) <= 3 else f"{shown} + {len(addresses) - 3} more..."


def _count(*fields: str) -> Callable[[Obj, datetime.datetime], int]:
    return lambda obj, _: sum(len(obj.get(f) or {}) for f in fields)


COLUMNS: dict[str, Sequence[Column]] = {
    "namespaces": [NAME, Column("Status", "string", lambda o, _: str(_status(o).get("phase", ""))), AGE],
    "configmaps": [NAME, Column("Data", "integer", _count("data", "binaryData")), AGE],
    "secrets": [
        NAME,
        Column("Type", "string", lambda o, _: str(o.get("type", "Opaque"))),
        Column("Data", "integer", _count("data")),
        AGE,
    ],
    "serviceaccounts": [NAME, Column("Secrets", "integer", _count("secrets")), AGE],
    "pods": [
        NAME,
        Column("Ready", "string", lambda o, n: pod_row(o, n).ready),
        Column("Status", "string", lambda o, n: pod_row(o, n).status),
        Column("Restarts", "string", lambda o, n: pod_row(o, n).restarts),
        AGE,
        Column("IP", "string", lambda o, _: _or_none(_status(o).get("podIP")), priority=1),
        Column("Node", "string", lambda o, _: _or_none(_spec(o).get("nodeName")), priority=1),
        Column("Nominated Node", "string", lambda o, _: _or_none(_status(o).get("nominatedNodeName")), priority=1),
        Column(
            "Readiness Gates",
            "string",
            lambda o, _: _or_none(",".join(g["conditionType"] for g in _spec(o).get("readinessGates") or [])),
            priority=1,
        ),
    ],
    "services": [
        NAME,
        Column("Type", "string", lambda o, _: str(_spec(o).get("type", "ClusterIP"))),
        Column("Cluster-IP", "string", lambda o, _: _or_none(_spec(o).get("clusterIP"))),
        Column("External-IP", "string", _service_external),
        Column("Port(s)", "string", _service_ports),
        AGE,
        Column("Selector", "string", _service_selector, priority=1),
    ],
    "deployments": [
        NAME,
        Column(
            "Ready",
            "string",
            lambda o, _: f"{_status(o).get('readyReplicas', 0)}/{_spec(o).get('replicas', 1)}",
        ),
        Column("Up-to-date", "integer", lambda o, _: int(_status(o).get("updatedReplicas", 0))),
        Column("Available", "integer", lambda o, _: int(_status(o).get("availableReplicas", 0))),
        AGE,
        Column("Containers", "string", _containers, priority=1),
        Column("Images", "string", _images, priority=1),
        Column("Selector", "string", _selector, priority=1),
    ],
    "replicasets": [
        NAME,
        Column("Desired", "integer", lambda o, _: int(_spec(o).get("replicas", 1))),
        Column("Current", "integer", lambda o, _: int(_status(o).get("replicas", 0))),
        Column("Ready", "integer", lambda o, _: int(_status(o).get("readyReplicas", 0))),
        AGE,
        Column("Containers", "string", _containers, priority=1),
        Column("Images", "string", _images, priority=1),
        Column("Selector", "string", _selector, priority=1),
    ],
    "statefulsets": [
        NAME,
        Column(
            "Ready",
            "string",
            lambda o, _: f"{_status(o).get('readyReplicas', 0)}/{_spec(o).get('replicas', 1)}",
        ),
        AGE,
        Column("Containers", "string", _containers, priority=1),
        Column("Images", "string", _images, priority=1),
    ],
    "mutatingwebhookconfigurations": [
        NAME,
        Column("Webhooks", "integer", lambda o, _: len(o.get("webhooks") or [])),
        AGE,
    ],
    "customresourcedefinitions": [
        NAME,
        Column(
            "Created At",
            "date",
            lambda o, _: str((o.get("metadata") or {}).get("creationTimestamp") or ""),
            description="CreationTimestamp of the object.",
        ),
    ],
    "endpointslices": [
        NAME,
        Column("AddressType", "string", lambda o, _: str(o.get("addressType", ""))),
        Column("Ports", "string", _slice_ports),
        Column("Endpoints", "string", _slice_endpoints),
        AGE,
    ],
}


def partial_metadata(obj: Obj) -> dict[str, Any]:
    """A typed ObjectMeta, in its fields' order (a custom resource's stored metadata has its keys sorted)."""
    meta = decoding.encode(obj["metadata"], decoding.go_type("meta/v1.ObjectMeta"))
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}


def table(
    plural: str,
    objects: Sequence[Obj],
    *,
    resource_version: str,
    include_object: str,
    now: datetime.datetime,
    with_columns: bool = True,
    continue_token: str = "",
    remaining_item_count: int | None = None,
) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table of `objects` with the resource's columns (and a list's paging metadata)."""
    columns = COLUMNS.get(plural, [NAME, AGE])
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [col.cell(obj, now) for col in columns]}
        if include_object == "Object":
            row["object"] = dict(obj)
        elif include_object == "Metadata":
            row["object"] = partial_metadata(obj)
        rows.append(row)
    meta: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        meta["continue"] = continue_token
    if remaining_item_count is not None:
        meta["remainingItemCount"] = remaining_item_count
    result: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
    if with_columns:
        result["columnDefinitions"] = [col.definition() for col in columns]
    result["rows"] = rows
    return result
