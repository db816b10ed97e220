"""Kubernetes-shaped objects for xDS tests: services, endpoint slices, pods, policies, and YAML."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def service(
    name: str,
    ns: str = "default",
    *,
    port: int = 80,
    target: int = 8080,
    port_name: str = "http",
    cluster_ip: str | None = "10.96.0.10",
    ports: Sequence[Mapping[str, Any]] | None = None,
    app: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"app": app or name},
        "ports": list(ports) if ports is not None else [{"name": port_name, "port": port, "targetPort": target}],
    }
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def endpoint_slice(
    svc: str,
    ns: str = "default",
    *,
    ips: Iterable[str],
    port: int = 8080,
    port_name: str = "http",
    name: str | None = None,
    zone: str = "",
    ready: bool = True,
) -> dict[str, Any]:
    endpoints = []
    for ip in ips:
        ep: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": ready}}
        if zone:
            ep["zone"] = zone
        endpoints.append(ep)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name or f"{svc}-slice", "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port}],
        "endpoints": endpoints,
    }


def pod(
    name: str,
    ip: str,
    ns: str = "default",
    *,
    app: str,
    sa: str = "default",
    sidecar: bool = True,
    ports: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    labels = {"app": app}
    if sidecar:
        labels["security.istio.io/tlsMode"] = "istio"
    container: dict[str, Any] = {"name": "app", "image": "app:1"}
    if ports:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in ports.items()]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"serviceAccountName": sa, "containers": [container]},
        "status": {"podIP": ip, "phase": "Running"},
    }


def peer_authentication(name: str, ns: str, mode: str, *, selector: Mapping[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": dict(selector)}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def mesh_objects(
    count: int,
    *,
    namespaces: Sequence[str] = ("alpha", "beta", "gamma"),
    endpoints_per_service: int = 2,
    http_port: int = 80,
    tcp_port: Callable[[int], int] = lambda index: 3000 + index,
    tcp_every: int = 4,
) -> list[dict[str, Any]]:
    """`count` services spread over namespaces, every `tcp_every`-th one TCP, each with endpoints and pods.

    HTTP services share `http_port`; TCP service number `index` listens on `tcp_port(index)`."""
    objects: list[dict[str, Any]] = [namespace(ns) for ns in namespaces]
    for index in range(count):
        ns = namespaces[index % len(namespaces)]
        name = f"svc-{index}"
        tcp = tcp_every and index % tcp_every == tcp_every - 1
        port_name = "tcp" if tcp else "http"
        port = tcp_port(index) if tcp else http_port
        ips = [f"10.{10 + index // 250}.{index % 250}.{n + 1}" for n in range(endpoints_per_service)]
        objects.append(
            service(name, ns, port=port, port_name=port_name, cluster_ip=f"10.96.{index // 250}.{index % 250 + 1}")
        )
        objects.append(endpoint_slice(name, ns, ips=ips, port_name=port_name, zone=f"zone-{index % 2}"))
        for n, ip in enumerate(ips):
            objects.append(pod(f"{name}-{n}", ip, ns, app=name, sa=name, sidecar=n % 2 == 0))
    return objects


def dump_yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    return yaml.safe_dump_all(list(objects), sort_keys=False)
