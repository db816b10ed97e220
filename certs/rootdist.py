"""Distributing the trust bundle (root certificates) to workloads.

- Local mode: `LocalRootFile` keeps `<state-dir>/root-cert.pem` equal to the bundle.
- Kubernetes mode: ConfigMap `istio-ca-root-cert` (key `root-cert.pem`, label
  `istio.io/config: "true"`) in every namespace except the ignored ones, recreated when deleted
  and restored when edited. `plan_root_configmaps` is the pure decision (what to create or
  update, given what is seen); `RootConfigMapReconciler` applies a plan through a tiny
  `ConfigMapClient`.

Seam: `controlplane/kube` (leader-elected) feeds namespace and ConfigMap events into
`RootConfigMapReconciler.reconcile` with its informers' view and provides the real client; the
CA calls it again with the new bundle after a root rotation.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from certs.pem import write_atomic

log = logging.getLogger(__name__)

ROOT_CONFIGMAP = "istio-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
CONFIG_LABEL = ("istio.io/config", "true")
# Istio leaves these alone; kube-system does get the ConfigMap.
IGNORED_NAMESPACES = frozenset({"kube-public", "kube-node-lease", "local-path-storage"})


class LocalRootFile:
    """`<state-dir>/root-cert.pem`, rewritten atomically whenever the bundle changes."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def publish(self, root_pem: bytes) -> bool:
        """Write the bundle if it differs from the file; return whether it was written."""
        if self.path.exists() and self.path.read_bytes() == root_pem:
            return False
        write_atomic(self.path, root_pem)
        log.info("trust bundle written", extra={"path": str(self.path)})
        return True


@dataclass(frozen=True, kw_only=True)
class NamespaceView:
    name: str
    terminating: bool = False


@dataclass(frozen=True, kw_only=True)
class ConfigMapView:
    namespace: str
    data: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ConfigMapAction:
    """Create or update ConfigMap `istio-ca-root-cert` in `namespace` to exactly `data`, with `labels`."""

    verb: Literal["create", "update"]
    namespace: str
    data: Mapping[str, str]
    labels: Mapping[str, str]


def wants_root_configmap(namespace: NamespaceView) -> bool:
    return namespace.name not in IGNORED_NAMESPACES and not namespace.terminating


def plan_root_configmaps(
    *,
    root_pem: str,
    namespaces: Iterable[NamespaceView],
    existing: Mapping[str, ConfigMapView],
) -> list[ConfigMapAction]:
    """What to do so every wanted namespace holds the bundle, sorted by namespace.

    `existing` maps a namespace to its current `istio-ca-root-cert` (absent: none there). A
    ConfigMap whose data is not exactly `{root-cert.pem: root_pem}` (edited, stale after a
    rotation, extra keys) is updated; one missing the `istio.io/config` label gets it back, other
    labels are kept. Ignored and terminating namespaces are left alone (nothing is deleted).
    """
    desired_data = {ROOT_CERT_KEY: root_pem}
    actions: list[ConfigMapAction] = []
    for ns in sorted(namespaces, key=lambda n: n.name):
        if not wants_root_configmap(ns):
            continue
        current = existing.get(ns.name)
        if current is None:
            actions.append(
                ConfigMapAction(verb="create", namespace=ns.name, data=desired_data, labels=dict([CONFIG_LABEL]))
            )
            continue
        labels = {**current.labels, CONFIG_LABEL[0]: CONFIG_LABEL[1]}
        if dict(current.data) != desired_data or dict(current.labels) != labels:
            actions.append(ConfigMapAction(verb="update", namespace=ns.name, data=desired_data, labels=labels))
    return actions


class ConfigMapMissing(Exception):
    """`update` found no ConfigMap (deleted since it was seen)."""


class ConfigMapExists(Exception):
    """`create` found one already (created since the view was taken)."""


class ConfigMapClient(Protocol):
    async def create(self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]) -> None:
        """Raises ConfigMapExists when the name is taken."""
        ...

    async def update(self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]) -> None:
        """Replace data and labels; raises ConfigMapMissing when it does not exist."""
        ...


# ConfigMap writes in flight at once. One at a time, a cluster of 3,000 namespaces without the
# ConfigMap (a first install) waited one API round trip per namespace, and every Pod there cannot
# start until its namespace has it; a few at once keep the API server's load to a few requests.
WRITES_IN_FLIGHT = 8


class RootConfigMapReconciler:
    """Applies `plan_root_configmaps` through a `ConfigMapClient`, `writes` at a time; a race (created or
    deleted meanwhile) turns a write into the other verb."""

    def __init__(self, client: ConfigMapClient, *, writes: int = WRITES_IN_FLIGHT) -> None:
        self.client = client
        self.writes = writes

    async def reconcile(
        self,
        *,
        root_pem: str,
        namespaces: Iterable[NamespaceView],
        existing: Mapping[str, ConfigMapView],
    ) -> list[ConfigMapAction]:
        """Apply the plan; return the actions taken. A client error propagates once every other action
        has been tried (the first one, when several failed)."""
        plan = plan_root_configmaps(root_pem=root_pem, namespaces=namespaces, existing=existing)
        slots = asyncio.Semaphore(self.writes)

        async def apply(action: ConfigMapAction) -> None:
            first, second = (self._create, self._update) if action.verb == "create" else (self._update, self._create)
            async with slots:
                try:
                    await first(action)
                except (ConfigMapExists, ConfigMapMissing):
                    await second(action)

        outcomes = await asyncio.gather(*(apply(action) for action in plan), return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise failures[0]
        return plan

    async def _create(self, action: ConfigMapAction) -> None:
        await self.client.create(
            namespace=action.namespace, name=ROOT_CONFIGMAP, data=action.data, labels=action.labels
        )

    async def _update(self, action: ConfigMapAction) -> None:
        await self.client.update(
            namespace=action.namespace, name=ROOT_CONFIGMAP, data=action.data, labels=action.labels
        )
