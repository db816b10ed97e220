"""The injector: decides whether to inject a pod, injects it, and explains what it did.

It needs no HTTP and no AdmissionReview: `admit()` takes a pod and where it lives and returns an
`Admission`. Namespace labels come from the config store (the webhook request does not carry them).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.model.store import ConfigStore
from controlplane.model.types import namespace as lookup_namespace
from webhook.config import InjectionConfig
from webhook.inject import InjectionError, InjectionParams, InvalidPod, inject_pod
from webhook.patch import json_patch
from webhook.policy import injection_required

log = logging.getLogger(__name__)

INJECTION_LABEL = "istio-injection"
REVISION_LABEL = "istio.io/rev"


class ConfigProvider(Protocol):
    @property
    def current(self) -> InjectionConfig: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class Admission:
    """The outcome for one pod. `patch` is None when nothing is to change."""

    allowed: bool
    patch: list[dict[str, Any]] | None = None
    warnings: list[str] = field(default_factory=list)
    skipped: str | None = None  # why injection was skipped
    error: str | None = None  # why the pod was rejected
    error_reason: str | None = None  # short metric label for the rejection


def label_conflict_warning(ns: str, labels: Mapping[str, str], *, revision: str) -> str | None:
    """The warning for a namespace that carries both injection labels, or None."""
    if INJECTION_LABEL not in labels or REVISION_LABEL not in labels:
        return None
    legacy, rev = labels[INJECTION_LABEL], labels[REVISION_LABEL]
    if legacy == "enabled":
        outcome = (
            f"istio-injection wins: the default revision injects this pod (this webhook is revision "
            f"{revision!r}) and istio.io/rev={rev} is ignored"
        )
    else:
        outcome = f"istio-injection={legacy} wins: the istio.io/rev={rev} label is ignored"
    return (
        f"namespace {ns!r} has both istio-injection={legacy} and istio.io/rev={rev}; {outcome}. "
        f"Remove one of the two labels."
    )


class Injector:
    def __init__(
        self,
        *,
        store: ConfigStore,
        config: ConfigProvider,
        revision: str,
        discovery_address: str,
        trust_domain: str,
        cluster_id: str,
    ) -> None:
        self.store = store
        self.config = config
        self.revision = revision
        self.discovery_address = discovery_address
        self.trust_domain = trust_domain
        self.cluster_id = cluster_id
        self._weighed: tuple[InjectionConfig, int] | None = None

    def injection_bytes(self) -> int:
        """What one injection costs under the current config beyond reading the pod, in bytes of
        JSON it adds to a minimal pod (`webhook.sample.added_bytes`); measured once per config.

        ~5.5 KB with Istio's templates; a mesh config whose `defaultConfig` holds 2,700
        `proxyMetadata` entries makes it ~190 KB, and an injection ~30 times slower."""
        config = self.config.current
        if self._weighed is None or self._weighed[0] is not config:
            from webhook.sample import added_bytes  # the sample injects, and injection imports this module

            try:
                weight = added_bytes(config)
            except (InjectionError, InvalidPod) as exc:  # the config was accepted by injecting the same pod
                log.warning("cannot weigh an injection under the current config, counting none: %s", exc)
                weight = 0
            self._weighed = (config, weight)
        return self._weighed[1]

    def admit(
        self,
        pod: Mapping[str, Any],
        *,
        namespace: str,
        cluster: str | None = None,
        network: str | None = None,
    ) -> Admission:
        config = self.config.current
        warnings: list[str] = []
        ns = lookup_namespace(self.store, namespace)
        if ns is not None:
            warning = label_conflict_warning(namespace, ns.labels, revision=self.revision)
            if warning:
                warnings.append(warning)
        try:
            decision = injection_required(pod, namespace=namespace, config=config)
        except InjectionError as exc:  # an invalid sidecar.istio.io/inject value
            return Admission(allowed=False, warnings=warnings, error=str(exc), error_reason="invalid_annotation")
        if not decision.inject:
            return Admission(allowed=True, warnings=warnings, skipped=decision.reason)
        params = InjectionParams(
            revision=self.revision,
            namespace=namespace,
            config=config,
            discovery_address=self.discovery_address,
            trust_domain=self.trust_domain,
            cluster_id=cluster or self.cluster_id,
            network=network or "",
        )
        try:
            injected = inject_pod(copy.deepcopy(dict(pod)), params, warnings=warnings)
        except InjectionError as exc:
            return Admission(allowed=False, warnings=warnings, error=str(exc), error_reason="invalid_annotation")
        except InvalidPod as exc:  # e.g. a probe naming a port the container does not declare
            return Admission(allowed=False, warnings=warnings, error=str(exc), error_reason="invalid_pod")
        patch = json_patch(pod, injected)
        return Admission(allowed=True, patch=patch or None, warnings=warnings)

    def describe(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "discoveryAddress": self.discovery_address,
            "config": self.config.describe(),
        }
