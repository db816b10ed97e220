"""Who a gRPC call comes from, as the limits that count per client see it."""

from __future__ import annotations


def client_of_peer(peer: str) -> str:
    """The address part of a gRPC peer name (`ipv4:10.1.2.3:5000` -> `10.1.2.3`, `ipv6:[::1]:5` -> `::1`).

    A client is an address: a pod, or a node for host-network pods, which share it. Other forms (a
    Unix socket, an empty name) are returned unchanged: each is one client."""
    kind, sep, rest = peer.partition(":")
    if not sep or kind not in ("ipv4", "ipv6"):
        return peer
    host = rest.rpartition(":")[0] if ":" in rest else rest
    return host.removeprefix("[").removesuffix("]")
