"""SDS for the secure port's Envoy front end: its serving certificate and the trust for client certificates.

Two secrets, served over `envoy.service.secret.v3.SecretDiscoveryService` (State of the World) on a
Unix socket in the front end's private directory, never on the secure port itself:

- `serving` (`tls_certificate`): meshplane's serving chain and key;
- `trust` (`validation_context`): the mesh roots (both of them during a root rotation) plus the
  serving authority's signer and intermediates, so a leaf from a plug-in intermediate verifies
  without the client sending the chain.

Streams are served by `controlplane.sdsstream`: every requested secret on the first request and
whenever the requested names change, and again whenever the serving certificate is reissued (at
half-life, or for a new trust bundle) and a secret differs.
ACKs get no answer; a NACK is logged. Names other than these two are logged and never answered.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from certs.pem import cert_pem
from certs.serving import ServingCertificate
from controlplane.sdsstream import SecretDiscovery
from controlplane.tlsfront import SERVING_SECRET, TRUST_SECRET


def trust_pem(serving: ServingCertificate) -> bytes:
    """The roots, the signer and its intermediates, each once, as one PEM bundle."""
    authority = serving.authority
    return b"".join(dict.fromkeys(cert_pem(c) for c in (*authority.roots, authority.cert, *authority.chain)))


def build_secret(name: str, serving: ServingCertificate) -> secret_pb2.Secret | None:
    """The secret `name` as of now; None for a name this server does not serve."""
    if name == SERVING_SECRET:
        return secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=serving.chain_pem()),
                private_key=base_pb2.DataSource(inline_bytes=serving.key_pem),
            ),
        )
    if name == TRUST_SECRET:
        return secret_pb2.Secret(
            name=name,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=trust_pem(serving))
            ),
        )
    return None


class FrontEndSecrets(SecretDiscovery):
    """The SDS service (register it on the front end's private gRPC server)."""

    names = frozenset({SERVING_SECRET, TRUST_SECRET})
    peer = "secure port's Envoy"

    def __init__(self, serving: ServingCertificate) -> None:
        super().__init__()
        self.serving = serving

    @property
    def version(self) -> int:
        return self.serving.generation

    async def wait_change(self, seen: int) -> int:
        return await self.serving.wait_reissued(seen)

    def secret(self, name: str) -> secret_pb2.Secret | None:
        return build_secret(name, self.serving)
