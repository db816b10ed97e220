"""How many xDS streams one client may keep open at once.

Every stream holds memory, however little it asks for: gRPC's call state and buffers, the request
it is handling, and its subscriptions (up to `names_per_stream`).
`StreamLimits` bounds one stream; `OpenStreams` bounds how many one client holds, on both xDS ports
together, so that what a client without credentials can make the server hold is bounded as a whole.

A client is an address (`controlplane.peers.client_of_peer`): a pod, or a node for host-network
pods, which share it. A sidecar needs one stream, two for a moment while it reconnects. The count is
taken before anything else, on the secure port before authentication, so a refused stream costs
only its refusal: RESOURCE_EXHAUSTED naming the client, its count and the flag that raises the limit.
The table holds only clients that have streams open. Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

import grpc

from discovery.stream import StreamRefused

FLAG = "--max-streams-per-client"


class OpenStreams:
    def __init__(self, per_client: int) -> None:
        if per_client < 1:
            raise ValueError(f"per_client must be at least 1, not {per_client}")
        self.per_client = per_client
        self._open: dict[str, int] = {}

    def of(self, client: str) -> int:
        """Streams `client` has open now."""
        return self._open.get(client, 0)

    def clients(self) -> int:
        """Clients with at least one stream open."""
        return len(self._open)

    def open(self, client: str) -> None:
        """Count one more stream of `client`; raises StreamRefused if it has `per_client` open already.
        Each `open` that returns must be matched by one `close`."""
        count = self.of(client)
        if count >= self.per_client:
            raise StreamRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"client {client or '(unknown address)'} already has {count} xDS streams open, the most one "
                f"client address may have (meshplane serve {FLAG}={self.per_client}); close the streams it "
                "no longer uses, or raise the limit if many proxies share this address",
            )
        self._open[client] = count + 1

    def close(self, client: str) -> None:
        """Count one stream of `client` fewer."""
        left = self._open[client] - 1
        if left:
            self._open[client] = left
        else:
            del self._open[client]
