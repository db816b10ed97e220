"""Generator-level test helpers: a registry over config objects, and what a proxy would be sent (no transport)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from controlplane.model.registry import Registry
from controlplane.model.store import ConfigStore, ObjectKey
from discovery import metrics
from discovery.cache import XdsCache
from discovery.connection import Watched
from discovery.generators import GenContext, ProxyView, table_for
from discovery.proxy import Proxy, parse_node
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE, WILDCARD_TYPES
from tests.discovery.harness import node


class World:
    def __init__(self, *objects: Mapping[str, Any]) -> None:
        self.store = ConfigStore()
        self.registry = Registry(self.store)
        metrics.conflicts.follow(self.registry)  # as DiscoveryService does
        self.cache = XdsCache()
        self.apply(*objects)

    def apply(self, *objects: Mapping[str, Any]) -> None:
        self.store.apply([(ObjectKey.of(o), o) for o in objects])

    def generate(
        self, proxy: Proxy, type_url: str, names: list[str] | None = None, *, table: Any = None
    ) -> dict[str, Message]:
        """What `proxy` is sent for `type_url` (wildcard unless `names`), from `table` or the proxy's own table."""
        snapshot = self.registry.snapshot()
        ctx = GenContext(snapshot=snapshot, view=ProxyView.build(proxy, snapshot), cache=self.cache)
        watched = Watched(
            type_url=type_url, names=frozenset(names or ()), wildcard=names is None and type_url in WILDCARD_TYPES
        )
        message_type = {
            CLUSTER: cluster_pb2.Cluster,
            ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
            LISTENER: listener_pb2.Listener,
            ROUTE: route_pb2.RouteConfiguration,
        }[type_url]
        out: dict[str, Message] = {}
        for group in (table or table_for(proxy))[type_url].generate(ctx, watched).groups:
            for resource in group.resources:
                message = message_type()
                resource.to_any().Unpack(message)
                out[resource.name] = message
        return out


def proxy(pod: str = "web-1", ip: str = "10.1.0.1", ns: str = "default", **metadata: Any) -> Proxy:
    return parse_node(node(pod=pod, ns=ns, ip=ip, **metadata))
