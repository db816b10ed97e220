"""Generators, one module per xDS type, and the tables that pick them by type URL.

Sidecars (the default) use `SIDECAR`; proxyless gRPC clients (node metadata `GENERATOR: grpc`)
use `GRPC`. A type URL with no generator in the proxy's table is logged and answered with
nothing; the stream stays open.
"""

from __future__ import annotations

from collections.abc import Mapping

from discovery.generators import cds, eds, grpc, lds, rds
from discovery.generators.base import GenContext, Generated, Generator, ProxyView
from discovery.proxy import Proxy
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE

SIDECAR: Mapping[str, Generator] = {
    CLUSTER: cds.GENERATOR,
    ENDPOINT: eds.GENERATOR,
    LISTENER: lds.GENERATOR,
    ROUTE: rds.GENERATOR,
}

GRPC: Mapping[str, Generator] = grpc.GENERATORS

TABLES: Mapping[str, Mapping[str, Generator]] = {"": SIDECAR, "grpc": GRPC}


def table_for(proxy: Proxy) -> Mapping[str, Generator]:
    """The generator table for a proxy; unknown GENERATOR values fall back to the sidecar table."""
    return TABLES.get(proxy.generator, SIDECAR)


__all__ = ["GRPC", "SIDECAR", "GenContext", "Generated", "Generator", "ProxyView", "table_for"]
