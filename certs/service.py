"""The gRPC CA: `istio.v1.auth.IstioCertificateService/CreateCertificate`.

The method only sequences: count the CSR -> authenticate (first authenticator that succeeds) ->
check the CSR, TTL and identity -> sign -> count the issuance. Status codes:

| outcome | status |
|---|---|
| no credentials; expired, forged, wrong-audience or wrong-issuer token; TokenReview says no | UNAUTHENTICATED |
| an authenticator could not decide (e.g. TokenReview API unreachable) and none succeeded | UNAVAILABLE |
| the caller's budget of token reviews is spent (`authenticate.reviewgate`) and none succeeded | RESOURCE_EXHAUSTED |
| the caller's address already has 32 requests signing and 1,024 waiting (`signslots`) | RESOURCE_EXHAUSTED |
| the signing worker process died before answering (it is restarted; a retry succeeds) | UNAVAILABLE |
| CSR asks for an identity the caller does not have (message names both) | PERMISSION_DENIED |
| malformed PEM, bad CSR signature, weak/unsupported key or curve, several URI SANs, | INVALID_ARGUMENT |
| negative or above-maximum TTL, CSR over 64 KiB | |

A CSR over 64 KiB is INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: the limit is a property of the
request field (retrying cannot help), while RESOURCE_EXHAUSTED signals a quota or capacity
condition that may clear. Unauthenticated callers learn nothing about their CSR: authentication
comes first. The request's `metadata` (Istio uses it for impersonation by trusted node agents) is
ignored, and never parsed (`read_request`): a certificate only ever names the authenticated caller.
Every refusal is counted (`citadel_server_authentication_failure_count`, or
`citadel_server_csr_sign_error_count{reason}`) and never yields a certificate.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from certs import metrics
from certs.authenticate import AuthenticationError, Authenticator, Caller, Credentials, NoCredentials
from certs.authority import now_utc
from certs.ca import CertificateAuthority
from certs.signing import Refusal, SigningPolicy, SigningRefused
from certs.signpool import SigningPool, WorkerUnavailable, sign_request
from certs.signslots import SigningSlots, SlotsExhausted
from controlplane.peers import client_of_peer
from controlplane.protopeek import peek_type
from protos.gen.istio.v1.auth import ca_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"].full_name
METHOD_PATH = f"/{SERVICE_NAME}/CreateCertificate"

#: The verified client leaf certificate (PEM) of a call, or None.
PeerCertificateLookup = Callable[[grpc.aio.ServicerContext[object, object]], bytes | None]


class CaError(Exception):
    """A refused request: the gRPC status to answer with and a precise message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class CertificateService:
    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        authenticators: Sequence[Authenticator],
        policy: SigningPolicy | None = None,
        pool: SigningPool | None = None,
        slots: SigningSlots | None = None,
        clock: Callable[[], dt.datetime] = now_utc,
    ) -> None:
        """`pool`, when given, checks CSRs and signs in worker processes (it must already follow the CA's
        authority changes, see `certs.runtime`); without it the event loop does that work itself.
        `slots` bounds how many requests of one client address sign at once (default `SigningSlots()`)."""
        if not authenticators:
            raise ValueError("the CA needs at least one authenticator")
        self.ca = ca
        self.authenticators = tuple(authenticators)
        self.policy = policy or SigningPolicy()
        self.pool = pool
        self.slots = slots if slots is not None else SigningSlots()
        self.clock = clock
        #: Finds the verified client certificate of a call. The default reads gRPC's own TLS state; the
        #: process wiring replaces it when TLS is terminated in front of gRPC (controlplane.tlsfront).
        self.peer_certificate: PeerCertificateLookup = tls_peer_certificate
        #: Names the client of a call as gRPC names a peer (`ipv4:10.1.2.3:5000`); replaced likewise.
        self.peer_name: Callable[[grpc.aio.ServicerContext[object, object]], str] = _grpc_peer

    # -- transport-independent core ---------------------------------------------------------------
    def credentials_of(self, context: grpc.aio.ServicerContext[Any, Any]) -> Credentials:
        """What a gRPC call presents: its metadata (lower-cased keys), its verified client certificate and
        the client's address."""
        return Credentials(
            metadata={
                key.lower(): value for key, value in context.invocation_metadata() or () if isinstance(value, str)
            },
            peer_certificate_pem=self.peer_certificate(context),
            client=client_of_peer(self.peer_name(context)),
        )

    async def identities_of(self, context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
        """The identities the CA would grant this call's caller; empty if its credentials do not
        authenticate it. Raises CaError (UNAVAILABLE, RESOURCE_EXHAUSTED) when that cannot be decided
        now, so that the caller can be told to retry instead of being told it has no identity.

        Used by secure xDS streams, which must be opened by the workload they name."""
        try:
            caller = await self.authenticate(self.credentials_of(context))
        except CaError as exc:
            if exc.code is grpc.StatusCode.UNAUTHENTICATED:
                return []
            raise
        return list(caller.identities)

    async def authenticate(self, credentials: Credentials) -> Caller:
        """The first authenticator's success, or CaError listing why each failed: UNAVAILABLE if one could
        not decide, else RESOURCE_EXHAUSTED if one refused to ask (the caller's review budget), else
        UNAUTHENTICATED."""
        absent: list[str] = []
        failed: list[str] = []
        unavailable = exhausted = False
        for authenticator in self.authenticators:
            try:
                return await authenticator.authenticate(credentials)
            except NoCredentials as exc:
                absent.append(f"{authenticator.name}: {exc}")
            except AuthenticationError as exc:
                failed.append(f"{authenticator.name}: {exc}")
                unavailable = unavailable or exc.unavailable
                exhausted = exhausted or exc.exhausted
        if not failed:
            raise CaError(grpc.StatusCode.UNAUTHENTICATED, f"no credentials ({'; '.join(absent)})")
        code = grpc.StatusCode.UNAUTHENTICATED
        if unavailable:
            code = grpc.StatusCode.UNAVAILABLE
        elif exhausted:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
        raise CaError(code, f"authentication failed ({'; '.join(failed)})")

    async def create_certificate(self, *, csr: str, validity_seconds: int, credentials: Credentials) -> list[str]:
        """Authenticate, check, sign; return the PEM chain, leaf first, root last. Raises CaError."""
        metrics.csr_count.inc()
        try:
            caller = await self.authenticate(credentials)
        except CaError:
            metrics.authentication_failure_count.inc()
            raise
        try:
            async with self.slots.slot(credentials.client):
                chain = await self._sign(csr=csr, validity_seconds=validity_seconds, caller=caller)
        except SlotsExhausted as exc:
            metrics.csr_sign_error_count.inc(reason="client_slots")
            raise CaError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        metrics.success_cert_issuance_count.inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("certificate issued", extra={"caller": ",".join(caller.identities), "source": caller.source})
        return chain

    async def _sign(self, *, csr: str, validity_seconds: int, caller: Caller) -> list[str]:
        """Check the CSR against the caller and sign it, in a worker when there is a pool. Raises CaError."""
        now = self.clock()
        try:
            if self.pool is None:
                chain = sign_request(
                    self.ca.current,
                    csr=csr,
                    validity_seconds=validity_seconds,
                    caller_identities=caller.identities,
                    policy=self.policy,
                    now=now,
                )
            else:
                chain = await self.pool.sign(
                    csr=csr,
                    validity_seconds=validity_seconds,
                    caller_identities=caller.identities,
                    policy=self.policy,
                    now=now,
                )
        except SigningRefused as exc:
            metrics.csr_sign_error_count.inc(reason=exc.reason)
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if exc.refusal is Refusal.FORBIDDEN
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            raise CaError(code, str(exc)) from None
        except WorkerUnavailable as exc:
            metrics.csr_sign_error_count.inc(reason="worker_unavailable")
            raise CaError(grpc.StatusCode.UNAVAILABLE, f"signing failed: {exc}") from None
        except Exception as exc:
            metrics.csr_sign_error_count.inc(reason="signing_failed")
            log.exception("signing failed")
            raise CaError(grpc.StatusCode.INTERNAL, f"signing failed: {exc}") from None
        return chain

    # -- gRPC -------------------------------------------------------------------------------------
    async def CreateCertificate(
        self, request: ca_pb2.IstioCertificateRequest | CaError, context: grpc.aio.ServicerContext[object, object]
    ) -> ca_pb2.IstioCertificateResponse:
        if isinstance(request, CaError):  # it did not parse (`read_request`)
            await context.abort(request.code, str(request))
        try:
            chain = await self.create_certificate(
                csr=request.csr, validity_seconds=request.validity_duration, credentials=self.credentials_of(context)
            )
        except CaError as exc:
            await context.abort(exc.code, str(exc))
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)

    def register(self, server: grpc.aio.Server) -> None:
        """Add this service to `server` (pass to `GrpcServers.add`)."""
        handler = grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                    self.CreateCertificate,
                    request_deserializer=read_request,
                    response_serializer=ca_pb2.IstioCertificateResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))


_REQUEST_PEEK = peek_type(ca_pb2.IstioCertificateRequest, ("csr", "validity_duration"))


def read_request(data: bytes) -> ca_pb2.IstioCertificateRequest | CaError:
    """The request's `csr` and `validity_duration`; its `metadata` (a Struct, ignored) is never parsed.
    Bytes that are no request give the `CaError` (INVALID_ARGUMENT) to answer with, in its place.

    Parsing a Struct costs time growing with the square of its fields (`controlplane.protopeek`): an
    unauthenticated 11 MB request held the event loop for 3.6 s before the caller was known."""
    try:
        peek = _REQUEST_PEEK.FromString(data)
    except DecodeError as exc:
        return CaError(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not an IstioCertificateRequest: {exc}")
    return ca_pb2.IstioCertificateRequest(csr=peek.csr, validity_duration=peek.validity_duration)


def _grpc_peer(context: grpc.aio.ServicerContext[object, object]) -> str:
    return str(context.peer())


def tls_peer_certificate(context: grpc.aio.ServicerContext[object, object]) -> bytes | None:
    """The client leaf certificate (PEM) gRPC verified, if the connection has one (servers requiring client auth)."""
    return next(iter(context.auth_context().get("x509_pem_cert", ())), None)
