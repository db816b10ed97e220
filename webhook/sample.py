"""The sample pod injection config is tried on before it is used.

A new injector config is accepted only if a sample Deployment pod (an application container with a
named port, an HTTP readiness probe and a TCP liveness probe) injects without error with its
default templates, and with each user template after them, and if the result is a pod Kubernetes
would accept as far as templates can break it: every container has an image, every volume mount
names a volume of the pod, no two containers or volumes share a name; injecting the result again
must change nothing. The injected `istio-init` and `istio-proxy` containers must be ones their
commands start with (`webhook.sidecarcheck`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from webhook.config import InjectionConfig
from webhook.inject import InjectionParams, inject_pod
from webhook.sidecarcheck import SidecarWouldNotStart
from webhook.validate import InjectionError, InvalidPod


def sample_pod(*, templates: Sequence[str]) -> dict[str, Any]:
    return {
        "metadata": {
            "generateName": "sample-5d8f9c7b6-",
            "namespace": "sample",
            "labels": {"app": "sample", "version": "v1", "pod-template-hash": "5d8f9c7b6"},
            "annotations": {"inject.istio.io/templates": ",".join(templates)},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "sample-5d8f9c7b6", "controller": True}
            ],
        },
        "spec": {
            "serviceAccountName": "sample",
            "containers": [
                {
                    "name": "app",
                    "image": "example.com/sample:1.0",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                    "livenessProbe": {"tcpSocket": {"port": 8080}},
                }
            ],
        },
    }


def _problems(pod: dict[str, Any]) -> str | None:
    spec = pod["spec"]
    volumes = [volume.get("name") for volume in spec.get("volumes") or []]
    if len(set(volumes)) != len(volumes):
        return f"two volumes share a name: {volumes}"
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    names = [container.get("name") for container in containers]
    if len(set(names)) != len(names):
        return f"two containers share a name: {names}"
    for container in containers:
        if not isinstance(container.get("image"), str) or not container["image"]:
            return f"container {container.get('name')!r} has no image"
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                return f"container {container.get('name')!r} mounts volume {mount.get('name')!r}, which the pod lacks"
    return None


def _sample_params(config: InjectionConfig) -> InjectionParams:
    return InjectionParams(
        revision="default",
        namespace="sample",
        config=config,
        discovery_address="istiod.istio-system.svc:15012",
        trust_domain="cluster.local",
        cluster_id="Kubernetes",
    )


def try_injection(config: InjectionConfig, *, templates: Sequence[str]) -> str | None:
    """None if the sample pod injects cleanly with `templates` under `config`, else what went wrong."""
    params = _sample_params(config)
    try:
        injected = inject_pod(sample_pod(templates=templates), params)
        problem = _problems(injected)
        if problem is None and inject_pod(copy.deepcopy(injected), params) != injected:
            problem = "injecting the injected pod again changes it"
    except SidecarWouldNotStart:
        raise
    except (InjectionError, InvalidPod) as exc:
        return str(exc)
    return problem


def added_bytes(config: InjectionConfig) -> int:
    """How many bytes of JSON injecting the sample pod with the default templates adds under
    `config`: what injection costs beyond reading the pod (its time follows these bytes, ~0.3 us
    each, as a review's follows the body's). Raises `InjectionError` or `InvalidPod` as injection does."""
    pod = sample_pod(templates=tuple(config.default_templates))
    before = len(json.dumps(pod))
    return max(0, len(json.dumps(inject_pod(pod, _sample_params(config)))) - before)
