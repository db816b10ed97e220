"""xDS type URLs and their short names."""

from __future__ import annotations

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

# Make before break: clusters, then their endpoints, then listeners, then the routes they use.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

SHORT = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS"}

# Types where an empty subscription means "everything" (SotW wildcard), per the xDS protocol.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})


def short(type_url: str) -> str:
    """CDS/EDS/LDS/RDS for the four core types, else the message name after the last dot."""
    return SHORT.get(type_url) or type_url.rsplit(".", 1)[-1]
