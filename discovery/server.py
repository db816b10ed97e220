"""The ADS gRPC facade: `envoy.service.discovery.v3.AggregatedDiscoveryService` on a grpc.aio server.

It only adapts gRPC to the streams: deserialize requests (`discovery.wire`: one over a limit is not
parsed), write pre-serialized response bytes (the response serializer is the identity), turn
`StreamRefused` into a gRPC status. Everything else is in `sotw`, `delta` and `service`.

On the secure port (`secure=True`) the caller's SPIFFE identity
(`spiffe://<trust domain>/ns/<ns>/sa/<sa>`, from the client certificate or whatever the injected
`identify` accepts) must name the namespace and service account the node claims (metadata
`NAMESPACE` or the id's namespace, and `SERVICE_ACCOUNT`); otherwise the stream ends with
PERMISSION_DENIED (UNAUTHENTICATED without any identity). Trust domains are not compared: the
identity was already verified against the mesh roots (or by the token authenticator). The caller
is authenticated before the first request is read, so a client without credentials never gets its
node parsed. Status details are cut to `metrics.TEXT_LIMIT` characters.

With `max_age`, a stream ends with UNAVAILABLE ("reconnect") 1.1-1.2 times `max_age` plus `grace`
after it opened. The secure port's front end (Envoy) sends each client connection a GOAWAY at
`max_age` (plus up to 10%), as gRPC's own `max_connection_age` does on the plaintext port, but
unlike gRPC it never closes a connection while a stream is open on it, and an xDS stream never
ends by itself: this ends it after the GOAWAY, so the proxy reconnects on a new connection, which
may reach another replica.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from cryptography import x509
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.peers import client_of_peer
from discovery.delta import DeltaStream
from discovery.metrics import HOOKS, clip
from discovery.service import DiscoveryService
from discovery.sotw import SotwStream
from discovery.stream import NO_IDENTITY, StreamBase, StreamRefused
from discovery.wire import RequestReader

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

log = logging.getLogger(__name__)


def _raw(payload: bytes) -> bytes:
    return payload


Context = grpc.aio.ServicerContext[Any, Any]
Identify = Callable[[Context], Awaitable[Sequence[str]]]


async def certificate_identities(context: Context) -> Sequence[str]:
    """The default `Identify`: the SPIFFE ids of the client certificate gRPC itself verified.

    Only servers where gRPC terminates TLS and requires client certificates have one; behind the
    shared port's TLS front end the process wiring passes an `identify` that looks it up there.
    """
    return peer_spiffe_ids(context)


def peer_spiffe_ids(context: Context) -> list[str]:
    """URI SANs starting with spiffe:// of the verified client certificate (empty without one)."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    ids: list[str] = []
    for pem in pems:
        try:
            cert = x509.load_pem_x509_certificate(pem)
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, x509.ExtensionNotFound):
            continue
        ids += [uri for uri in sans.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith("spiffe://")]
    return ids


class AdsServer:
    """Registers ADS on a grpc.aio server. One instance per port (plaintext or secure).

    `identify` finds the caller's SPIFFE identities on the secure port; the default reads the
    client certificate, and the process wiring may pass one that also accepts bearer tokens.
    """

    def __init__(
        self,
        service: DiscoveryService,
        *,
        secure: bool,
        identify: Identify = certificate_identities,
        peer_name: Callable[[Any], str] | None = None,
        max_age: float | None = None,
        grace: float = 10.0,
    ) -> None:
        """`peer_name(context)` names the client in status and logs (default: `context.peer()`;
        behind the secure port's TLS front end, the client's real address). `max_age`, `grace`:
        seconds; see the module docstring (None: streams never age)."""
        self.service = service
        self.secure = secure
        self.max_age = max_age
        self.grace = grace
        self.identify = identify
        self.peer_name = peer_name or (lambda context: str(context.peer()))

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                functools.partial(self._run, SotwStream),
                request_deserializer=RequestReader(discovery_pb2.DiscoveryRequest, self.service.limits),
                response_serializer=_raw,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                functools.partial(self._run, DeltaStream),
                request_deserializer=RequestReader(discovery_pb2.DeltaDiscoveryRequest, self.service.limits),
                response_serializer=_raw,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    @property
    def _aged_details(self) -> str:
        return f"the connection reached its maximum age ({self.max_age:g}s, --max-connection-age); reconnect"

    async def _serve_until_aged(self, serving: Awaitable[None], max_age: float) -> bool:
        """Await `serving` for at most its lifetime; False if that ran out first."""
        lifetime = max_age * random.uniform(1.1, 1.2) + self.grace  # after the front end's GOAWAY
        try:
            async with asyncio.timeout(lifetime) as deadline:
                await serving
        except TimeoutError:
            if deadline.expired():
                return False
            raise
        return True

    async def _run(self, kind: type[StreamBase[Any]], requests: object, context: Context) -> None:
        """Serve one ADS call. The stream reads with `context.read()` (gRPC's request iterator, `requests`,
        is not used: iterating it would keep one more generator per stream alive)."""
        peer = self.peer_name(context)
        client = client_of_peer(peer)
        try:
            self.service.open_streams.open(client)  # first: a refusal costs nothing more
            try:
                identities: Sequence[str] | None = None
                if self.secure:
                    identities = await self.identify(context)  # before anything the client sent is parsed
                    if not identities:
                        raise StreamRefused(grpc.StatusCode.UNAUTHENTICATED, NO_IDENTITY)
                stream = kind(self.service, transport=context, peer=peer)
                if self.max_age is None:
                    await stream.serve(identities)
                elif not await self._serve_until_aged(stream.serve(identities), self.max_age):
                    log.debug("xDS stream of %s reached its maximum age; asking it to reconnect", peer)
                    await context.abort(grpc.StatusCode.UNAVAILABLE, self._aged_details)
            finally:
                self.service.open_streams.close(client)
        except StreamRefused as exc:
            HOOKS.rejected_stream(peer, exc.code, exc.details)
            await context.abort(exc.code, clip(exc.details))
        except Exception:
            if context.cancelled() or context.done():
                return  # the client went away while we were writing to it
            raise
