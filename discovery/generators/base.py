"""What every generator sees: the proxy's view of one snapshot, the cache, and the push request.

A generator is a small object with `type_url`, `needs_push(request, view, watched)` (does this
push concern this proxy's subscription?) and `generate(ctx, watched)` (the resources to send,
as cached groups). A generator of a non-wildcard type may also offer `only(ctx, names)`
(`AnswersAdded`): the named resources alone, for a SotW subscription that grew (the client keeps
what a response leaves out), or for one piece of a large answer. Generators never touch streams,
nonces or versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeGuard, runtime_checkable

from controlplane.model.fields import EMPTY_LABELS
from controlplane.model.registry import MeshSnapshot
from controlplane.model.security import MtlsMode
from controlplane.model.services import Protocol as AppProtocol
from controlplane.model.services import Service
from controlplane.model.workloads import Workload
from discovery.cache import Resource, ResourceGroup, XdsCache
from discovery.connection import Watched
from discovery.proxy import DEFAULT_LOOPBACK, InterceptionMode, Proxy
from discovery.pushqueue import PushRequest


@dataclass(frozen=True, kw_only=True)
class InboundPort:
    """A port the proxy's workload serves for some service, with the mTLS mode that applies to it."""

    port: int  # the workload (target) port
    protocol: AppProtocol
    mode: MtlsMode


@dataclass(frozen=True, kw_only=True)
class ProxyView:
    """The proxy resolved against one snapshot: its workload, its services and inbound policy."""

    proxy: Proxy
    snapshot_version: int
    workload: Workload | None
    labels: Mapping[str, str]
    service_account: str
    services: tuple[Service, ...]  # services selecting this workload
    inbound: tuple[InboundPort, ...]  # sorted by port
    default_mode: MtlsMode  # the mode for ports that no service names

    @property
    def namespace(self) -> str:
        return self.proxy.namespace

    @property
    def mode(self) -> InterceptionMode:
        return self.proxy.interception_mode

    @property
    def app_address(self) -> str:
        """Where inbound clusters reach the application: the proxy's loopback address with interception
        NONE (`LOOPBACK_ADDRESS`), else 127.0.0.1 (REDIRECT runs in the pod's own network)."""
        if self.mode is InterceptionMode.NONE:
            return self.proxy.loopback
        return DEFAULT_LOOPBACK

    @property
    def inbound_key(self) -> tuple[object, ...]:
        """Everything the inbound configuration depends on, for cache keys."""
        return (self.default_mode, self.inbound, self.app_address)

    @classmethod
    def build(cls, proxy: Proxy, snapshot: MeshSnapshot) -> ProxyView:
        workload = next((w for ip in proxy.ip_addresses if (w := snapshot.workloads_by_ip.get(ip))), None)
        labels = proxy.labels or (workload.labels if workload else EMPTY_LABELS)
        services = snapshot.services_selecting(namespace=proxy.namespace, labels=labels)
        mtls = snapshot.mtls_for(namespace=proxy.namespace, labels=labels)
        ports: dict[int, AppProtocol] = {}
        for svc in services:
            for sp in svc.ports:
                if sp.protocol is AppProtocol.UDP:
                    continue
                target = workload.resolve_port(sp.target_port) if workload else None
                if target is None:
                    target = sp.target_port if isinstance(sp.target_port, int) else sp.port
                ports.setdefault(target, sp.protocol)
        inbound = tuple(
            InboundPort(port=port, protocol=protocol, mode=mtls.for_port(port))
            for port, protocol in sorted(ports.items())
        )
        return cls(
            proxy=proxy,
            snapshot_version=snapshot.version,
            workload=workload,
            labels=labels,
            service_account=proxy.service_account or (workload.service_account if workload else ""),
            services=services,
            inbound=inbound,
            default_mode=mtls.mode,
        )


@dataclass(frozen=True, kw_only=True)
class GenContext:
    snapshot: MeshSnapshot
    view: ProxyView
    cache: XdsCache
    request: PushRequest | None = None  # None when answering the client's own request


@dataclass(frozen=True, kw_only=True)
class Generated:
    """The resources to send. `complete` is False when only some of the subscription is included
    (an incremental EDS push), so Delta must not treat missing names as removed."""

    groups: tuple[ResourceGroup, ...]
    complete: bool = True
    names: frozenset[str] = field(default=frozenset())  # all resource names that exist (complete only)

    @property
    def resources(self) -> list[object]:
        return [r for g in self.groups for r in g.resources]

    @property
    def size(self) -> int:
        return sum(len(g.blob) for g in self.groups)


def only(group: ResourceGroup, names: frozenset[str]) -> ResourceGroup:
    """The resources of `group` named in `names` (for explicit, non-wildcard subscriptions)."""
    return ResourceGroup([r for r in group.resources if r.name in names])


class Generator(Protocol):
    type_url: str

    def needs_push(self, request: PushRequest, view: ProxyView, watched: Watched) -> bool:
        """Whether `request` changes anything this proxy subscribed to for this type."""
        ...

    def generate(self, ctx: GenContext, watched: Watched) -> Generated:
        """The resources for `watched` (all of them, or only the changed ones for an incremental push)."""
        ...


@runtime_checkable
class BuildsInPieces(Generator, Protocol):
    """A generator whose whole response, when the cache does not hold it, is too much to build in one
    turn of the event loop (CDS: every Service's clusters)."""

    def pieces(self, ctx: GenContext) -> Iterator[None]:
        """Builds into the cache, a piece at a time, what `generate` then takes from it for any
        subscription; stops before each piece (the caller gives the loop a turn). Nothing to build
        when the cache keeps it."""
        ...


@runtime_checkable
class AnswersAdded(Generator, Protocol):
    """A generator of a non-wildcard type (EDS, RDS) that can send some subscribed resources alone.

    Its answer to a client's request (`generate` with no push request) holds the resources of the
    subscribed names, in name order, each as `only` builds it: so a large answer can be built in
    pieces of names (`discovery.stream.StreamBase.answer`), then put together by `keep`."""

    def only(self, ctx: GenContext, names: Iterable[str]) -> Generated:
        """The resources of `names` alone: an incomplete response (the client keeps the others)."""
        ...

    def kept(self, ctx: GenContext, watched: Watched) -> Generated | None:
        """`generate`'s answer to a request for `watched` if the cache keeps it whole (another proxy
        asked for the same names), without building anything; else None."""
        ...

    def keep(self, ctx: GenContext, watched: Watched, resources: Sequence[Resource]) -> Generated:
        """`generate`'s answer to a request for `watched`, made of `resources` (those `only` built for
        its names, in name order) and kept in the cache as `generate` would keep it."""
        ...


_IMPLEMENTS: dict[tuple[type, object], bool] = {}


def _implements(generator: object, protocol: object) -> bool:
    """`isinstance(generator, protocol)`, worked out once per class: a runtime-checkable protocol's
    check looks up each of its members (~9 us), and every push makes it for every stream."""
    key = (type(generator), protocol)
    found = _IMPLEMENTS.get(key)
    if found is None:
        found = _IMPLEMENTS[key] = isinstance(generator, protocol)  # type: ignore[arg-type]
    return found


def builds_in_pieces(generator: Generator) -> TypeGuard[BuildsInPieces]:
    return _implements(generator, BuildsInPieces)


def answers_added(generator: Generator) -> TypeGuard[AnswersAdded]:
    return _implements(generator, AnswersAdded)
