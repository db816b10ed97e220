"""An injector as `meshplane serve` builds one for revision `default`, for tests and benchmarks."""

from __future__ import annotations

from controlplane.model.store import ConfigStore
from webhook.config import InjectionConfig
from webhook.configwatch import InjectionConfigWatcher
from webhook.inject import InjectionParams
from webhook.service import Injector

# What `inject_pod` is given for revision `default` with Istio's defaults (no ConfigMaps).
DEFAULT_PARAMS = InjectionParams(
    revision="default",
    namespace="default",
    config=InjectionConfig(),
    discovery_address="istiod.istio-system.svc:15012",
    trust_domain="cluster.local",
    cluster_id="Kubernetes",
)


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
