"""The service registry: typed model views built from `ConfigStore` events, and change events.

`Registry` subscribes to a `ConfigStore` (whichever source fills it) and keeps services,
endpoints, workloads, PeerAuthentications, namespaces and mesh config. Each batch of store events
becomes one `ModelChange` naming what changed, so pushes can be minimal:

- `SERVICE <hostname>`: the service was added, removed or edited, or the set of service accounts
  behind it changed (clients verify those identities, so their clusters change);
- `ENDPOINTS <hostname>`: only the endpoints changed (address, port, health, zone, sidecar);
- `WORKLOAD <ip>`: the pod at that address changed labels, service account, sidecar or ports, so
  the proxy running there needs its own (inbound) configuration rebuilt;
- `POLICY <namespace>/<name>`: a PeerAuthentication changed;
- `MESH`: the mesh config changed.

`snapshot()` returns an immutable `MeshSnapshot`; generators read only snapshots, so a push sees
one consistent view. Objects that fail to parse are logged and listed in `problems`, and the last
good version of that object stays in the model (the Kubernetes source stores whatever the API
server has, so the registry must not trust it blindly). Services that conflict with each other
(`services.find_conflicts`: a shared clusterIP and port, a port the sidecar reserves) are decided
with each snapshot, logged once when they appear, and listed in `problems` too, under the losing
Service; the snapshot's `conflicts` tells the generators what each loser gives up.
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from controlplane.model import fields
from controlplane.model.endpoints import EndpointAddress, EndpointGroup, EndpointSlice, ServiceEndpoints
from controlplane.model.fields import ObjectError, selector_matches
from controlplane.model.meshconfig import MeshConfig
from controlplane.model.security import EffectiveMtls, PeerAuthentication, PolicyIndex, effective_mtls
from controlplane.model.services import DEFAULT_DOMAIN, Conflicts, Service, find_conflicts, hostname
from controlplane.model.store import ConfigEvent, ConfigStore, EventType, ObjectKey
from controlplane.model.workloads import Workload

log = logging.getLogger(__name__)


class UpdateKind(enum.Enum):
    SERVICE = "Service"
    ENDPOINTS = "Endpoints"
    WORKLOAD = "Workload"
    POLICY = "PeerAuthentication"
    MESH = "MeshConfig"


@dataclass(frozen=True)
class ConfigUpdate:
    kind: UpdateKind
    name: str  # hostname, IP, namespace/name, or "" for MESH

    def __str__(self) -> str:
        return f"{self.kind.value}/{self.name}" if self.name else self.kind.value

    @property
    def sort_key(self) -> tuple[str, str]:
        return self.kind.value, self.name


@dataclass(frozen=True, kw_only=True)
class ModelChange:
    updates: frozenset[ConfigUpdate]
    version: int  # the snapshot version that includes this change

    @property
    def endpoints_only(self) -> bool:
        return all(u.kind is UpdateKind.ENDPOINTS for u in self.updates)


ChangeListener = Callable[[ModelChange], None]


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True, eq=False)
class MeshSnapshot:
    """One consistent, immutable view of the mesh. Versions let caches key on what they read."""

    version: int = 0
    domain: str = DEFAULT_DOMAIN
    services: Mapping[str, Service] = field(default_factory=_empty)  # by hostname, in hostname order
    services_by_namespace: Mapping[str, tuple[Service, ...]] = field(default_factory=_empty)
    # port number -> the services with an outbound HTTP port of that number, in hostname order (RDS)
    http_services_by_port: Mapping[int, tuple[Service, ...]] = field(default_factory=_empty)
    endpoints: Mapping[str, ServiceEndpoints] = field(default_factory=_empty)  # by hostname
    workloads: Mapping[tuple[str, str], Workload] = field(default_factory=_empty)  # by (namespace, name)
    workloads_by_ip: Mapping[str, Workload] = field(default_factory=_empty)
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=_empty)  # name -> labels
    conflicts: Conflicts = field(default_factory=Conflicts)  # decided once per services version
    mesh: MeshConfig = field(default_factory=MeshConfig)
    services_version: int = 0  # changes with any SERVICE update
    policy_version: int = 0  # changes with any POLICY update
    mesh_version: int = 0  # changes with any MESH update
    endpoints_version: int = 0  # changes with any ENDPOINTS update

    def endpoints_for(self, host: str) -> ServiceEndpoints:
        found = self.endpoints.get(host)
        return found if found is not None else ServiceEndpoints.none_for(host)

    def services_selecting(self, *, namespace: str, labels: Mapping[str, str]) -> tuple[Service, ...]:
        """Services in `namespace` whose (non-empty) selector matches `labels`."""
        return tuple(
            svc
            for svc in self.services_by_namespace.get(namespace, ())
            if svc.selector and selector_matches(svc.selector, labels)
        )

    @functools.cached_property
    def _policies(self) -> PolicyIndex:
        return PolicyIndex(self.peer_authentications)

    def mtls_for(self, *, namespace: str, labels: Mapping[str, str]) -> EffectiveMtls:
        root = self.mesh.root_namespace
        policies = self._policies.candidates(namespace=namespace, labels=labels, root_namespace=root)
        return effective_mtls(policies, namespace=namespace, labels=labels, root_namespace=root)


@dataclass(frozen=True, kw_only=True)
class Problem:
    key: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.field}: {self.message}"


class Registry:
    """The typed model of one ConfigStore. Construct it once per store; it subscribes itself.

    Listeners registered with `subscribe` get one `ModelChange` per store batch that changed the
    model (a batch that changes nothing the mesh uses gives no event). They run inline and must be
    quick; one that raises is logged and the others still run.
    """

    def __init__(
        self,
        store: ConfigStore,
        *,
        domain: str = DEFAULT_DOMAIN,
        mesh_namespace: str = "istio-system",
        mesh_configmap: str = "istio",
        mesh_defaults: MeshConfig | None = None,
    ) -> None:
        self.domain = domain
        self._mesh_key = ObjectKey("ConfigMap", mesh_namespace, mesh_configmap)
        self._mesh_defaults = mesh_defaults or MeshConfig(root_namespace=mesh_namespace)
        self._mesh = self._mesh_defaults
        self._listeners: list[ChangeListener] = []
        self._services: dict[tuple[str, str], Service] = {}
        self._slices: dict[tuple[str, str], EndpointSlice] = {}
        self._slices_by_service: dict[tuple[str, str], set[str]] = {}
        self._ip_refs: dict[str, dict[tuple[str, str], int]] = {}
        self._pods: dict[tuple[str, str], Workload] = {}
        self._pods_by_ip: dict[str, tuple[str, str]] = {}
        self._endpoints: dict[str, ServiceEndpoints] = {}
        self._policies: dict[tuple[str, str], PeerAuthentication] = {}
        self._namespaces: dict[str, Mapping[str, str]] = {}
        self._problems: dict[ObjectKey, Problem] = {}
        self._revisions = itertools.count(1)
        self._version = 0
        self._services_version = 0
        self._policy_version = 0
        self._mesh_version = 0
        self._endpoints_version = 0
        self._snapshot: MeshSnapshot | None = None
        self._parts: dict[str, Any] = {}
        store.subscribe(self._on_events)
        existing = [
            ConfigEvent(type=EventType.ADDED, key=ObjectKey.of(obj), old=None, new=obj)
            for kind in ("Namespace", "ConfigMap", "Service", "Pod", "EndpointSlice", "PeerAuthentication")
            for obj in store.list(kind)
        ]
        if existing:
            self._on_events(existing)

    # -- reading -------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self._version

    @property
    def problems(self) -> list[Problem]:
        """Objects that failed to parse, then service ports that lost a conflict (each sorted by object)."""
        invalid = [self._problems[key] for key in sorted(self._problems)]
        conflicts = sorted(
            (
                Problem(
                    key=str(ObjectKey("Service", c.service.namespace, c.service.name)), field=c.field, message=c.message
                )
                for c in self.snapshot().conflicts.items
            ),
            key=lambda p: (p.key, p.field),
        )
        return invalid + conflicts

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def endpoints_now(self, host: str) -> ServiceEndpoints:
        """`host`'s endpoints as held now, as the next snapshot will have them, without building one.

        Building a snapshot copies the views that changed (every Pod's, after a Pod change), so a
        listener that needs one service's endpoints on every change reads them here."""
        found = self._endpoints.get(host)
        return found if found is not None else ServiceEndpoints.none_for(host)

    def snapshot(self) -> MeshSnapshot:
        """The current view; the same object until the next change."""
        if self._snapshot is None:
            self._snapshot = self._build_snapshot()
        return self._snapshot

    # -- events --------------------------------------------------------------------------------
    def _on_events(self, events: Sequence[ConfigEvent]) -> None:
        updates: set[ConfigUpdate] = set()
        dirty: set[tuple[str, str]] = set()  # services whose endpoints must be recomputed
        for event in events:
            kind = event.key.kind
            try:
                if kind == "Service":
                    self._on_service(event, updates)
                elif kind == "EndpointSlice":
                    self._on_slice(event, dirty)
                elif kind == "Pod":
                    self._on_pod(event, updates, dirty)
                elif kind == "PeerAuthentication":
                    self._on_policy(event, updates)
                elif kind == "ConfigMap" and event.key == self._mesh_key:
                    self._on_mesh(event, updates)
                elif kind == "Namespace":
                    self._on_namespace(event)
                else:
                    continue
            except ObjectError as exc:
                self._problems[event.key] = Problem(key=str(event.key), field=exc.field, message=exc.message)
                log.warning("%s is invalid and keeps its last good state: %s", event.key, exc)
                continue
            except Exception as exc:  # a bug: it must cost this object only, not the rest of the batch
                message = f"could not be read ({type(exc).__name__}: {exc}); this is a meshplane bug"
                self._problems[event.key] = Problem(key=str(event.key), field="(object)", message=message)
                log.exception("%s could not be read and keeps its last good state", event.key)
                continue
            self._problems.pop(event.key, None)
        for key in sorted(dirty):
            self._recompute_endpoints(key, updates)
        if updates:
            self._publish(frozenset(updates))

    def _publish(self, updates: frozenset[ConfigUpdate]) -> None:
        self._version += 1
        if any(u.kind is UpdateKind.SERVICE for u in updates):
            self._services_version = self._version
            self._parts.pop("services", None)
        if any(u.kind is UpdateKind.POLICY for u in updates):
            self._policy_version = self._version
            self._parts.pop("policies", None)
        if any(u.kind is UpdateKind.MESH for u in updates):
            self._mesh_version = self._version
        if any(u.kind is UpdateKind.ENDPOINTS for u in updates):
            self._endpoints_version = self._version
            self._parts.pop("endpoints", None)
        self._snapshot = None
        change = ModelChange(updates=updates, version=self._version)
        log.debug("model changed", extra={"version": self._version, "updates": len(updates)})
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("model listener %r failed", listener)

    def _on_service(self, event: ConfigEvent, updates: set[ConfigUpdate]) -> None:
        key = (event.key.namespace, event.key.name)
        if event.new is None:
            if self._services.pop(key, None) is not None:
                updates.add(ConfigUpdate(UpdateKind.SERVICE, self._host(key)))
            return
        service = Service.from_object(event.new, domain=self.domain)
        if self._services.get(key) != service:
            self._services[key] = service
            updates.add(ConfigUpdate(UpdateKind.SERVICE, service.hostname))

    def _on_slice(self, event: ConfigEvent, dirty: set[tuple[str, str]]) -> None:
        key = (event.key.namespace, event.key.name)
        new = EndpointSlice.from_object(event.new) if event.new is not None else None
        old = self._slices.pop(key, None)
        if old is not None:
            self._unindex_slice(old)
            dirty.add((old.namespace, old.service_name))
        if new is not None:
            self._slices[key] = new
            self._index_slice(new)
            dirty.add((new.namespace, new.service_name))
        dirty.discard((event.key.namespace, ""))

    def _index_slice(self, slc: EndpointSlice) -> None:
        if not slc.service_name:
            return
        svc = (slc.namespace, slc.service_name)
        self._slices_by_service.setdefault(svc, set()).add(slc.name)
        for ep in slc.endpoints:
            refs = self._ip_refs.setdefault(ep.address, {})
            refs[svc] = refs.get(svc, 0) + 1

    def _unindex_slice(self, slc: EndpointSlice) -> None:
        if not slc.service_name:
            return
        svc = (slc.namespace, slc.service_name)
        names = self._slices_by_service.get(svc)
        if names is not None:
            names.discard(slc.name)
            if not names:
                del self._slices_by_service[svc]
        for ep in slc.endpoints:
            refs = self._ip_refs.get(ep.address)
            if refs is None or svc not in refs:
                continue
            refs[svc] -= 1
            if refs[svc] <= 0:
                del refs[svc]
            if not refs:
                del self._ip_refs[ep.address]

    def _on_pod(self, event: ConfigEvent, updates: set[ConfigUpdate], dirty: set[tuple[str, str]]) -> None:
        key = (event.key.namespace, event.key.name)
        new = Workload.from_object(event.new) if event.new is not None else None
        old = self._pods.pop(key, None)
        if old is not None:
            for ip in old.ips:
                if self._pods_by_ip.get(ip) == key:
                    del self._pods_by_ip[ip]
        if new is not None:
            self._pods[key] = new
            for ip in new.ips:
                self._pods_by_ip[ip] = key
        if old != new:
            self._parts.pop("workloads", None)
            self._snapshot = None
        if _proxy_view(old) != _proxy_view(new):
            for ip in {*(old.ips if old else ()), *(new.ips if new else ())}:
                updates.add(ConfigUpdate(UpdateKind.WORKLOAD, ip))
        for ip in {*(old.ips if old else ()), *(new.ips if new else ())}:
            dirty.update(self._ip_refs.get(ip, {}))

    def _on_policy(self, event: ConfigEvent, updates: set[ConfigUpdate]) -> None:
        key = (event.key.namespace, event.key.name)
        if event.new is None:
            if self._policies.pop(key, None) is not None:
                updates.add(ConfigUpdate(UpdateKind.POLICY, f"{key[0]}/{key[1]}"))
            return
        policy = PeerAuthentication.from_object(event.new)
        if self._policies.get(key) != policy:
            self._policies[key] = policy
            updates.add(ConfigUpdate(UpdateKind.POLICY, f"{key[0]}/{key[1]}"))

    def _on_mesh(self, event: ConfigEvent, updates: set[ConfigUpdate]) -> None:
        mesh = (
            MeshConfig.from_configmap(event.new, defaults=self._mesh_defaults)
            if event.new is not None
            else self._mesh_defaults
        )
        if mesh != self._mesh:
            self._mesh = mesh
            updates.add(ConfigUpdate(UpdateKind.MESH, ""))

    def _on_namespace(self, event: ConfigEvent) -> None:
        if event.new is None:
            self._namespaces.pop(event.key.name, None)
        else:
            meta = event.new.get("metadata") or {}
            self._namespaces[event.key.name] = fields.labels(meta.get("labels"), "metadata.labels")
        self._parts.pop("namespaces", None)
        self._snapshot = None

    # -- endpoints -----------------------------------------------------------------------------
    def _host(self, key: tuple[str, str]) -> str:
        return hostname(name=key[1], namespace=key[0], domain=self.domain)

    def _pod_for(self, namespace: str, pod: str, address: str) -> Workload | None:
        if pod:
            found = self._pods.get((namespace, pod))
            if found is not None:
                return found
        by_ip = self._pods_by_ip.get(address)
        return self._pods.get(by_ip) if by_ip is not None else None

    def _recompute_endpoints(self, key: tuple[str, str], updates: set[ConfigUpdate]) -> None:
        host = self._host(key)
        groups: list[EndpointGroup] = []
        for slice_name in sorted(self._slices_by_service.get(key, ())):
            slc = self._slices[(key[0], slice_name)]
            if slc.address_type == "FQDN" or not slc.ports or not slc.endpoints:
                continue
            addresses: list[EndpointAddress] = []
            for ep in slc.endpoints:
                pod = self._pod_for(key[0], ep.pod, ep.address)
                account, sidecar = (pod.service_account, pod.sidecar) if pod else ("", False)
                addresses.append(
                    EndpointAddress(
                        address=ep.address,
                        health=ep.health,
                        zone=ep.zone,
                        node_name=ep.node_name,
                        pod=pod.name if pod else ep.pod,
                        service_account=account,
                        sidecar=sidecar,
                    )
                )
            groups.append(EndpointGroup(ports=slc.ports, addresses=tuple(addresses)))
        new = ServiceEndpoints(hostname=host, groups=tuple(groups), revision=0)
        old = self._endpoints.get(host)
        if old is not None and old.groups == new.groups:
            return
        if old is None and new.empty:
            return
        if not new.empty:
            new = self._endpoints[host] = ServiceEndpoints(
                hostname=host, groups=new.groups, revision=next(self._revisions)
            )
        else:
            del self._endpoints[host]
        updates.add(ConfigUpdate(UpdateKind.ENDPOINTS, host))
        old_accounts = old.service_accounts if old is not None else frozenset()
        new_accounts = new.service_accounts
        if old_accounts != new_accounts and key in self._services:
            updates.add(ConfigUpdate(UpdateKind.SERVICE, host))

    # -- snapshots -----------------------------------------------------------------------------
    def _build_snapshot(self) -> MeshSnapshot:
        if "services" not in self._parts:
            ordered = sorted(self._services.values(), key=lambda s: s.hostname)
            by_ns: dict[str, list[Service]] = {}
            by_port: dict[int, list[Service]] = {}
            for svc in ordered:
                by_ns.setdefault(svc.namespace, []).append(svc)
                for number in sorted({p.port for p in svc.outbound_ports if p.protocol.is_http}):
                    by_port.setdefault(number, []).append(svc)
            previous = {(c.service.ref, c.field, c.message) for c in self._parts.get("conflicts", Conflicts()).items}
            conflicts = find_conflicts(ordered)
            for conflict in conflicts.items:
                if (conflict.service.ref, conflict.field, conflict.message) not in previous:
                    log.warning("Service %s: %s: %s", conflict.service.ref, conflict.field, conflict.message)
            self._parts["conflicts"] = conflicts
            self._parts["services"] = (
                MappingProxyType({s.hostname: s for s in ordered}),
                MappingProxyType({ns: tuple(items) for ns, items in by_ns.items()}),
                MappingProxyType({port: tuple(items) for port, items in by_port.items()}),
            )
        if "endpoints" not in self._parts:
            self._parts["endpoints"] = MappingProxyType(dict(self._endpoints))
        if "workloads" not in self._parts:
            self._parts["workloads"] = (
                MappingProxyType(dict(self._pods)),
                MappingProxyType({ip: self._pods[key] for ip, key in self._pods_by_ip.items()}),
            )
        if "policies" not in self._parts:
            self._parts["policies"] = tuple(self._policies[k] for k in sorted(self._policies))
        if "namespaces" not in self._parts:
            self._parts["namespaces"] = MappingProxyType(dict(sorted(self._namespaces.items())))
        services, services_by_ns, http_by_port = self._parts["services"]
        workloads, by_ip = self._parts["workloads"]
        return MeshSnapshot(
            version=self._version,
            domain=self.domain,
            services=services,
            services_by_namespace=services_by_ns,
            http_services_by_port=http_by_port,
            endpoints=self._parts["endpoints"],
            workloads=workloads,
            workloads_by_ip=by_ip,
            peer_authentications=self._parts["policies"],
            namespaces=self._parts["namespaces"],
            conflicts=self._parts["conflicts"],
            mesh=self._mesh,
            services_version=self._services_version,
            policy_version=self._policy_version,
            mesh_version=self._mesh_version,
            endpoints_version=self._endpoints_version,
        )


def _proxy_view(workload: Workload | None) -> tuple[Any, ...] | None:
    """What a proxy's own configuration reads from its pod (phase and node do not matter)."""
    if workload is None:
        return None
    return (
        dict(workload.labels),
        workload.service_account,
        workload.ips,
        workload.sidecar,
        dict(workload.container_ports),
    )
