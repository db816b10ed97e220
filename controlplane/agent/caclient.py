"""The CA client: one `CreateCertificate` call over TLS, as Istio's agent makes it.

The server must present a certificate for `istiod_san` issued under the trusted roots. The caller
proves who it is with the bearer token and, once it has one, its current workload certificate
(TLS client certificate), so a renewal works even after the token has expired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from google.protobuf import struct_pb2

from protos.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc

log = logging.getLogger(__name__)

# Codes worth retrying without any change on our side; the others need the operator (or a new
# token, root or CA configuration), so they are retried too, but reported as refusals.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # the CA asks this client to slow down (its token reviews)
    }
)


class CaCallError(Exception):
    """The call failed; `code` is the gRPC status, `detail` the server's message (or the transport's)."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(f"{code.name}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT


@dataclass(frozen=True, kw_only=True)
class CaRequest:
    csr: str
    ttl_seconds: int
    token: str | None
    client_key_pem: bytes | None = None
    client_chain_pem: bytes | None = None


class CaClient:
    def __init__(self, *, address: str, server_name: str, cluster_id: str = "", timeout: float = 10.0) -> None:
        self.address = address
        self.server_name = server_name
        self.cluster_id = cluster_id
        self.timeout = timeout

    async def create_certificate(self, request: CaRequest, *, roots_pem: bytes) -> list[str]:
        """The chain (leaf first) the CA signed. Raises CaCallError."""
        if request.client_key_pem and request.client_chain_pem:
            creds = grpc.ssl_channel_credentials(
                roots_pem, private_key=request.client_key_pem, certificate_chain=request.client_chain_pem
            )
        else:
            creds = grpc.ssl_channel_credentials(roots_pem)
        options = [("grpc.ssl_target_name_override", self.server_name), ("grpc.enable_retries", 0)]
        metadata: list[tuple[str, str]] = []
        if request.token:
            metadata.append(("authorization", f"Bearer {request.token}"))
        if self.cluster_id:
            metadata.append(("clusterid", self.cluster_id))
        message = ca_pb2.IstioCertificateRequest(csr=request.csr, validity_duration=request.ttl_seconds)
        if self.cluster_id:
            cluster = struct_pb2.Value(string_value=self.cluster_id)
            message.metadata.CopyFrom(struct_pb2.Struct(fields={"ClusterID": cluster}))
        async with grpc.aio.secure_channel(self.address, creds, options=options) as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]
            try:
                response = await stub.CreateCertificate(message, metadata=metadata, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                raise CaCallError(exc.code(), exc.details() or "") from None
        return list(response.cert_chain)
