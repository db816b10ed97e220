"""The process's two gRPC servers, shared by every gRPC service (xDS, CA).

- plaintext on `--grpc-addr` (:15010);
- TLS on `--secure-grpc-addr` (:15012) with meshplane's serving certificate. The TLS server *asks
  for* a client certificate but does not require one: a caller proves itself with a mesh client
  certificate (verified against the mesh roots, both of them during a root rotation) or with a
  bearer token. A presented certificate that does not verify fails the handshake.

grpcio's Python API can only either not request a client certificate or require one, so the
secure port is a `TlsFrontEnd` (Python's `ssl`, `CERT_OPTIONAL`, ALPN `h2`, TLS >= 1.2) that pipes
each connection to an internal plaintext gRPC server bound on 127.0.0.1 (ephemeral port) carrying
exactly the services registered with `secure=True`. Services find the verified client certificate
with `peer_certificates.for_context(context)` (never `context.auth_context()`, which is empty
there); a connection to the internal port that the front end did not make has none.

After `ServingCertificate.reissue()` (which also follows a new trust bundle), new handshakes get the
new certificate and trust; open connections carry on. `/ready` counts the secure port as up only
while the front end is listening (`listening`).

Services register with `add(register, plaintext=..., secure=...)` before `start()`, where
`register` is a generated `add_XServicer_to_server`-style callable taking the server.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc

from certs.pem import cert_pem, write_atomic
from certs.serving import ServingCertificate
from controlplane.settings import Address, SettingsError
from controlplane.tlsfront import PeerCertificates, TlsFrontEnd

log = logging.getLogger(__name__)

Register = Callable[[grpc.aio.Server], None]

# Generous limits: full CDS/EDS responses for large meshes exceed gRPC's 4 MiB default.
_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


class MeshTlsContexts:
    """Server `SSLContext`s for the secure port, rebuilt when the serving certificate is reissued.

    Each context serves `serving`'s chain, asks for a client certificate without requiring one
    (`CERT_OPTIONAL`), trusts the serving authority's roots plus its signer and intermediates (so a
    leaf from a plug-in intermediate verifies without the client sending the chain), offers ALPN
    `h2`, and accepts TLS 1.2 or later.
    """

    def __init__(self, serving: ServingCertificate) -> None:
        self.serving = serving
        self._generation = -1
        self._context: ssl.SSLContext | None = None

    def __call__(self) -> ssl.SSLContext:
        if self._context is None or self.serving.generation != self._generation:
            generation = self.serving.generation
            self._context = self._build()
            if self._generation >= 0:
                log.info("secure gRPC port picked up a reissued serving certificate", extra={"generation": generation})
            self._generation = generation
        return self._context

    def _build(self) -> ssl.SSLContext:
        serving = self.serving
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.set_alpn_protocols(["h2"])
        with tempfile.TemporaryDirectory(prefix="meshplane-grpc-tls-") as tmp:
            cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            write_atomic(cert_file, serving.chain_pem())
            write_atomic(key_file, serving.key_pem, mode=0o600)
            ctx.load_cert_chain(cert_file, key_file)
        authority = serving.authority
        trusted = dict.fromkeys(cert_pem(c) for c in (*authority.roots, authority.cert, *authority.chain))
        ctx.load_verify_locations(cadata=b"".join(trusted).decode("ascii"))
        return ctx


class GrpcServers:
    def __init__(
        self, *, plaintext_addr: Address | None, secure_addr: Address | None, serving: ServingCertificate
    ) -> None:
        self.serving = serving
        self.plaintext_addr = plaintext_addr
        self.secure_addr = secure_addr
        self.plaintext = grpc.aio.server(options=_OPTIONS) if plaintext_addr else None
        # The services of the secure port live on this internal server, reached only through the front end.
        self.secure = grpc.aio.server(options=_OPTIONS) if secure_addr else None
        self.peer_certificates = PeerCertificates()
        self.front: TlsFrontEnd | None = None
        self.internal_port: int | None = None
        self.started = False

    def add(self, register: Register, *, plaintext: bool, secure: bool) -> None:
        if plaintext and self.plaintext is not None:
            register(self.plaintext)
        if secure and self.secure is not None:
            register(self.secure)

    @property
    def listening(self) -> bool:
        """Every configured port is accepting (the secure one through its TLS front end)."""
        return self.started and (self.front is None or self.front.listening)

    async def start(self) -> None:
        """Bind and start. Raises SettingsError naming the address when a port cannot be bound."""
        if self.plaintext is not None and self.plaintext_addr is not None:
            self._bind(self.plaintext.add_insecure_port, self.plaintext_addr, "grpc")
            await self.plaintext.start()
        if self.secure is not None and self.secure_addr is not None:
            internal = Address(host="127.0.0.1", port=0)
            self.internal_port = self._bind(self.secure.add_insecure_port, internal, "secure grpc (internal)")
            await self.secure.start()
            self.front = TlsFrontEnd(
                contexts=MeshTlsContexts(self.serving),
                backend_port=self.internal_port,
                peers=self.peer_certificates,
            )
            try:
                await self.front.start(self.secure_addr.bind_host, self.secure_addr.port)
            except OSError as exc:
                raise SettingsError(
                    f"cannot listen on {self.secure_addr} for secure grpc: {exc.strerror or exc}"
                ) from exc
            log.info("secure grpc listening on %s (TLS, client certificate optional)", self.secure_addr)
        self.started = True

    @staticmethod
    def _bind(add: Callable[[str], int], addr: Address, name: str) -> int:
        target = f"{addr.bind_host if ':' not in addr.bind_host else '[' + addr.bind_host + ']'}:{addr.port}"
        try:
            port = add(target)
        except RuntimeError as exc:
            raise SettingsError(f"cannot listen on {addr} for {name}: {exc}") from exc
        if port == 0:
            raise SettingsError(f"cannot listen on {addr} for {name}: address in use or not available")
        log.info("%s listening on %s", name, f"{addr.bind_host}:{port}")
        return port

    async def stop(self, grace: float) -> None:
        """Stop accepting; let open RPCs finish for up to `grace` seconds, then close what is left."""
        if self.front is not None:
            self.front.close()
        await asyncio.gather(*(server.stop(grace) for server in (self.secure, self.plaintext) if server is not None))
        if self.front is not None:
            # The internal server has ended its connections; let the pipes flush what they hold.
            await self.front.wait_closed(within=min(grace, 5.0) if grace > 0 else 0.5)
        self.started = False
