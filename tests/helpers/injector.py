"""An injector as `meshplane serve` builds one for revision `default`, for tests and benchmarks."""

from __future__ import annotations

from controlplane.model.store import ConfigStore
from webhook.configwatch import InjectionConfigWatcher
from webhook.service import Injector


def default_injector() -> Injector:
    """Istio's templates and mesh config (no ConfigMaps); discovery at istiod.istio-system.svc:15012,
    cluster `Kubernetes`."""
    store = ConfigStore()
    config = InjectionConfigWatcher(
        store, namespace="istio-system", injector_configmap="istio-sidecar-injector", mesh_configmap="istio"
    )
    return Injector(
        store=store,
        config=config,
        revision="default",
        discovery_address="istiod.istio-system.svc:15012",
        trust_domain="cluster.local",
        cluster_id="Kubernetes",
    )
