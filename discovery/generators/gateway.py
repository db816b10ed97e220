"""LDS and RDS for routers (gateway pods, node type `router`).

Istio builds a gateway's listeners and routes from its Gateway config (the servers of the Gateways
selecting the pod). meshplane has no Gateway config yet, so a router gets no listeners and no
route configurations: every LDS answer is an empty, complete set (Envoy counts it as a successful
update, so the gateway becomes ready), and nothing ever changes it, so no push concerns it.
Clusters and endpoints come from the same generators as for sidecars (`cds.GATEWAY`, `eds`).
"""

from __future__ import annotations

from discovery.connection import Watched
from discovery.generators.base import GenContext, Generated, ProxyView
from discovery.pushqueue import PushRequest
from discovery.xdstypes import LISTENER, ROUTE

_NOTHING = Generated(groups=(), names=frozenset())


class NoGatewayConfig:
    """A generator for `type_url` that answers every request with no resources (an empty SotW set;
    in Delta, requested names are announced as removed) and never needs a push."""

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url

    def needs_push(self, request: PushRequest, view: ProxyView, watched: Watched) -> bool:
        return False

    def generate(self, ctx: GenContext, watched: Watched) -> Generated:
        return _NOTHING


LISTENERS = NoGatewayConfig(LISTENER)
ROUTES = NoGatewayConfig(ROUTE)
