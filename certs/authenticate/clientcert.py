"""Authenticate by the caller's TLS client certificate (e.g. an agent renewing with its current cert).

The identities are the `spiffe://` URI SANs of the peer's leaf certificate; one that is not
`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` with valid Kubernetes names makes the
whole certificate unacceptable (AuthenticationError). The TLS layer verifies
the peer chain against the mesh roots during the handshake; this authenticator checks again that the leaf
was issued by the CA's current signer or one of the trusted roots and is within its validity,
so a certificate from another authority is never taken at its word.

The certificate comes from `Credentials.peer_certificate_pem`, which the gRPC service fills through
its `peer_certificate` lookup: on the shared :15012 port that is the TLS front end's record of the
connection (it asks for a client certificate without requiring one, which grpcio alone cannot do).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from certs.authenticate import AuthenticationError, Caller, Credentials, NoCredentials
from certs.identity import SPIFFE_SCHEME, parse_spiffe_id


class ClientCertAuthenticator:
    name = "client-certificate"

    def __init__(
        self,
        *,
        issuers: Callable[[], Sequence[x509.Certificate]],
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        """`issuers()` returns the certificates allowed to have issued a caller's leaf (signer and roots)."""
        self._issuers = issuers
        self._clock = clock

    async def authenticate(self, credentials: Credentials) -> Caller:
        if not credentials.peer_certificate_pem:
            raise NoCredentials("no client certificate presented")
        try:
            leaf = x509.load_pem_x509_certificate(credentials.peer_certificate_pem)
        except ValueError as exc:
            raise AuthenticationError(f"client certificate does not parse: {exc}") from None
        now = self._clock()
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            raise AuthenticationError(
                f"client certificate is not valid now (valid {leaf.not_valid_before_utc.isoformat()} "
                f"to {leaf.not_valid_after_utc.isoformat()})"
            )
        if not any(_issued_by(leaf, issuer) for issuer in self._issuers()):
            raise AuthenticationError("client certificate was not issued by this mesh's CA")
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise AuthenticationError("client certificate has no subjectAltName") from None
        identities = tuple(
            u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(SPIFFE_SCHEME)
        )
        if not identities:
            raise AuthenticationError("client certificate has no spiffe:// URI SAN")
        for identity in identities:
            try:
                parse_spiffe_id(identity, field="client certificate URI SAN")
            except ValueError as exc:
                raise AuthenticationError(str(exc)) from None
        return Caller(source=self.name, identities=identities)


def _issued_by(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
