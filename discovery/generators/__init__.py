"""Generators, one module per xDS type, and the tables that pick them by type URL.

Proxyless gRPC clients (node metadata `GENERATOR: grpc`) use `GRPC`; otherwise the node type
decides: routers (gateway pods) use `ROUTER` (outbound clusters, endpoints, and no listeners or
routes until Gateway config exists), sidecars `SIDECAR`. A type URL with no generator in the
proxy's table is logged and answered with nothing; the stream stays open.
"""

from __future__ import annotations

from collections.abc import Mapping

from discovery.generators import cds, eds, gateway, grpc, lds, rds
from discovery.generators.base import GenContext, Generated, Generator, ProxyView
from discovery.proxy import Proxy
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE

SIDECAR: Mapping[str, Generator] = {
    CLUSTER: cds.GENERATOR,
    ENDPOINT: eds.GENERATOR,
    LISTENER: lds.GENERATOR,
    ROUTE: rds.GENERATOR,
}

ROUTER: Mapping[str, Generator] = {
    CLUSTER: cds.GATEWAY,
    ENDPOINT: eds.GENERATOR,
    LISTENER: gateway.LISTENERS,
    ROUTE: gateway.ROUTES,
}

GRPC: Mapping[str, Generator] = grpc.GENERATORS


def table_for(proxy: Proxy) -> Mapping[str, Generator]:
    """The generator table for a proxy. Unknown GENERATOR values are ignored: the node type decides."""
    if proxy.proxyless:
        return GRPC
    return ROUTER if proxy.router else SIDECAR


__all__ = ["GRPC", "ROUTER", "SIDECAR", "GenContext", "Generated", "Generator", "ProxyView", "table_for"]
