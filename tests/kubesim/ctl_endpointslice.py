"""The EndpointSlice controller: slices `<service>-<random>` for every Service with a selector.

As upstream's `pkg/controller/endpointslice`: endpoints come from the selected pods that have an
IP and are not finished (terminating ones stay, with `ready: false`, `serving` from the pod's
Ready condition and `terminating: true`), each with its targetRef and nodeName; ports resolve the
Service's targetPort by number or by the name of a container port, so pods resolving differently
land in different slices (at most 100 endpoints each). Slices carry `kubernetes.io/service-name`
and `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io` and are owned by the
Service; a Service without pods keeps one empty slice. Services without a selector are left alone.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from controlplane.kube.client import KubeApi, KubeApiError
from tests.kubesim.ctl_base import (
    ENDPOINTSLICES,
    Controller,
    EventLog,
    Informer,
    Obj,
    key_of,
    new_controller_ref,
    object_path,
    pod_ready_since,
)

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS = 100


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _resolve_port(pod: Mapping[str, Any], port: Mapping[str, Any]) -> int | None:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = port.get("protocol", "TCP")
    for container in (pod.get("spec") or {}).get("containers") or []:
        for cport in container.get("ports") or []:
            if cport.get("name") == target and cport.get("protocol", "TCP") == protocol:
                return int(cport["containerPort"])
    return None


def _pod_ports(service: Mapping[str, Any], pod: Mapping[str, Any]) -> tuple[tuple[str, str, int, str], ...]:
    ports = []
    for port in (service.get("spec") or {}).get("ports") or []:
        number = _resolve_port(pod, port)
        if number is not None:
            ports.append(
                (
                    str(port.get("name") or ""),
                    str(port.get("protocol", "TCP")),
                    number,
                    str(port.get("appProtocol") or ""),
                )
            )
    return tuple(ports)


def _endpoint(service: Mapping[str, Any], pod: Mapping[str, Any]) -> Obj:
    publish = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    serving = publish or pod_ready_since(pod) is not None
    terminating = bool(pod["metadata"].get("deletionTimestamp"))
    meta = pod["metadata"]
    endpoint: Obj = {
        "addresses": [pod["status"]["podIP"]],
        "conditions": {
            "ready": serving and (publish or not terminating),
            "serving": serving,
            "terminating": terminating,
        },
        "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
    }
    if (pod.get("spec") or {}).get("nodeName"):
        endpoint["nodeName"] = pod["spec"]["nodeName"]
    return endpoint


def _slice_ports(ports: tuple[tuple[str, str, int, str], ...]) -> list[Obj]:
    result = []
    for name, protocol, number, app in ports:
        entry: Obj = {"name": name, "protocol": protocol, "port": number}
        if app:
            entry["appProtocol"] = app
        result.append(entry)
    return result


class EndpointSliceController(Controller):
    name = "endpointslice-controller"

    def __init__(self, *, api: KubeApi, services: Informer, pods: Informer, slices: Informer, events: EventLog) -> None:
        super().__init__(api=api, informers=(services, pods, slices), events=events)
        self.services = services
        self.pods = pods
        self.slices = slices
        services.subscribe(lambda old, new: self._enqueue_service(new if new is not None else old))
        pods.subscribe(self._on_pod)
        slices.subscribe(self._on_slice)

    def _enqueue_service(self, service: Obj | None) -> None:
        if service is not None:
            namespace, name = key_of(service)
            self.queue.add(f"{namespace}/{name}")

    def _on_pod(self, old: Obj | None, new: Obj | None) -> None:
        pod = new if new is not None else old
        if pod is None:
            return
        namespace = key_of(pod)[0]
        label_sets = [(p["metadata"].get("labels") or {}) for p in (old, new) if p is not None]
        for service in self.services.list(namespace):
            selector = (service.get("spec") or {}).get("selector")
            if selector and any(_selects(selector, labels) for labels in label_sets):
                self._enqueue_service(service)

    def _on_slice(self, old: Obj | None, new: Obj | None) -> None:
        piece = new if new is not None else old
        labels = (piece or {}).get("metadata", {}).get("labels") or {}
        if piece is not None and labels.get(MANAGED_BY) == CONTROLLER_NAME and labels.get(SERVICE_NAME):
            self.queue.add(f"{key_of(piece)[0]}/{labels[SERVICE_NAME]}")

    async def sync(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        service = self.services.get(namespace, name)
        if service is None or service["metadata"].get("deletionTimestamp"):
            return  # the garbage collector removes the slices the Service owned
        selector = (service.get("spec") or {}).get("selector")
        if not selector:
            return
        wanted = self._desired(service, selector)
        mine = [
            s
            for s in self.slices.list(namespace)
            if (s["metadata"].get("labels") or {}).get(SERVICE_NAME) == name
            and (s["metadata"].get("labels") or {}).get(MANAGED_BY) == CONTROLLER_NAME
            and not s["metadata"].get("deletionTimestamp")
        ]
        spare = sorted(mine, key=lambda s: str(s["metadata"]["name"]))
        for ports, endpoints in wanted:
            match = next((s for s in spare if (s.get("ports") or []) == ports), spare[0] if spare else None)
            if match is not None:
                spare.remove(match)
            await self._write(service, match, ports, endpoints)
        for leftover in spare:
            path = object_path(ENDPOINTSLICES, namespace, leftover["metadata"]["name"])
            try:
                await self.api.request("DELETE", path, body={"preconditions": {"uid": leftover["metadata"]["uid"]}})
            except KubeApiError as exc:
                if exc.status not in (404, 409):
                    raise

    def _desired(self, service: Obj, selector: Mapping[str, str]) -> list[tuple[list[Obj], list[Obj]]]:
        """(ports, endpoints) per slice: pods grouped by how they resolve the ports, 100 per slice."""
        groups: dict[tuple[tuple[str, str, int, str], ...], list[Obj]] = {}
        pods = sorted(self.pods.list(service["metadata"]["namespace"]), key=lambda p: str(p["metadata"]["name"]))
        for pod in pods:
            if not _selects(selector, pod["metadata"].get("labels") or {}):
                continue
            status = pod.get("status") or {}
            if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
                continue
            groups.setdefault(_pod_ports(service, pod), []).append(_endpoint(service, pod))
        if not groups:
            return [([], [])]
        return [
            (_slice_ports(ports), endpoints[i : i + MAX_ENDPOINTS])
            for ports, endpoints in groups.items()
            for i in range(0, len(endpoints), MAX_ENDPOINTS)
        ]

    async def _write(self, service: Obj, current: Obj | None, ports: list[Obj], endpoints: list[Obj]) -> None:
        meta = service["metadata"]
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in (SERVICE_NAME, MANAGED_BY)}
        labels.update({SERVICE_NAME: meta["name"], MANAGED_BY: CONTROLLER_NAME})
        if (service.get("spec") or {}).get("clusterIP") == "None":
            labels["service.kubernetes.io/headless"] = ""
        if current is None:
            body: Obj = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "generateName": f"{meta['name']}-",
                    "namespace": meta["namespace"],
                    "labels": labels,
                    "ownerReferences": [new_controller_ref(service, api_version="v1", kind="Service")],
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            }
            await self.api.request("POST", ENDPOINTSLICES.path(meta["namespace"]), body=body)
            return
        if (
            (current.get("endpoints") or []) == endpoints  # an empty list is stored, and read back, as null
            and (current.get("ports") or []) == ports
            and (current["metadata"].get("labels") == labels)
        ):
            return
        updated = copy.deepcopy(current)
        updated.update({"endpoints": endpoints, "ports": ports})
        updated["metadata"]["labels"] = labels
        path = object_path(ENDPOINTSLICES, meta["namespace"], current["metadata"]["name"])
        await self.api.request("PUT", path, body=updated)
