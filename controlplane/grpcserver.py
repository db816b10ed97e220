"""The process's two gRPC servers, shared by every gRPC service (xDS, CA).

- plaintext on `--grpc-addr` (:15010);
- TLS on `--secure-grpc-addr` (:15012) with meshplane's serving certificate. Client certificates
  are not required, so callers may authenticate with a token. (grpcio's Python API can only
  either not request a client certificate or require one; it has no "request but do not require"
  mode, so on this server no client certificate reaches the services.)

The TLS credentials are dynamic: after `ServingCertificate.reissue()`, new handshakes get the new
certificate and trust bundle, and open streams carry on.

Services register with `add(register, plaintext=..., secure=...)` before `start()`, where
`register` is a generated `add_XServicer_to_server`-style callable taking the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from certs.serving import ServingCertificate
from controlplane.settings import Address, SettingsError

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


def _cert_config(serving: ServingCertificate) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(serving.key_pem, serving.chain_pem())], root_certificates=serving.root_pem()
    )


class GrpcServers:
    def __init__(
        self, *, plaintext_addr: Address | None, secure_addr: Address | None, serving: ServingCertificate
    ) -> None:
        self.serving = serving
        self.plaintext_addr = plaintext_addr
        self.secure_addr = secure_addr
        self.plaintext = grpc.aio.server(options=_OPTIONS) if plaintext_addr else None
        self.secure = grpc.aio.server(options=_OPTIONS) if secure_addr else None
        self._generation = serving.generation
        self.started = False

    def add(self, register: Register, *, plaintext: bool, secure: bool) -> None:
        if plaintext and self.plaintext is not None:
            register(self.plaintext)
        if secure and self.secure is not None:
            register(self.secure)

    def _fetch_config(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake; returns a new config only after a reissue."""
        if self.serving.generation == self._generation:
            return None
        self._generation = self.serving.generation
        log.info("secure gRPC server picked up a reissued serving certificate")
        return _cert_config(self.serving)

    async def start(self) -> None:
        if self.plaintext is not None and self.plaintext_addr is not None:
            self._bind(self.plaintext.add_insecure_port, self.plaintext_addr, "grpc")
            await self.plaintext.start()
        if self.secure is not None and self.secure_addr is not None:
            # grpc-stubs types the fetcher as never returning None; grpc documents None as "no change".
            creds = grpc.dynamic_ssl_server_credentials(
                _cert_config(self.serving),
                self._fetch_config,  # type: ignore[arg-type]
                require_client_authentication=False,
            )
            self._bind(lambda a: self.secure.add_secure_port(a, creds), self.secure_addr, "secure grpc")  # type: ignore[union-attr]
            await self.secure.start()
        self.started = True

    @staticmethod
    def _bind(add: Callable[[str], int], addr: Address, name: str) -> None:
        target = f"{addr.bind_host if ':' not in addr.bind_host else '[' + addr.bind_host + ']'}:{addr.port}"
        try:
            port = add(target)
        except RuntimeError as exc:
            raise SettingsError(f"cannot listen on {addr} for {name}: {exc}") from exc
        if port == 0:
            raise SettingsError(f"cannot listen on {addr} for {name}: address in use or not available")
        log.info("%s listening on %s", name, addr)

    async def stop(self, grace: float) -> None:
        """Stop accepting; let open RPCs finish for up to `grace` seconds."""
        for server in (self.secure, self.plaintext):
            if server is not None:
                await server.stop(grace)
        self.started = False
