"""SDS for Envoy on a Unix socket: secrets `default` (certificate and key) and `ROOTCA` (trust bundle).

State of the World streams (`StreamSecrets`, served by `controlplane.sdsstream`): the first request
of a stream, or a change of the requested names, is answered with every requested secret the agent
has; every rotation or root change is pushed to every open stream. ACKs get no answer; a NACK is
logged. A secret the agent does not have yet (no certificate: the CA has not answered) is sent once
it arrives, so Envoy simply waits. Names other than `default` and `ROOTCA` are never answered, and
logged.
"""

from __future__ import annotations

import logging
import pathlib

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from controlplane.agent import metrics
from controlplane.agent.secrets import SecretManager
from controlplane.agent.unixgrpc import start_unix_server, stop_unix_server
from controlplane.sdsstream import SecretDiscovery

log = logging.getLogger(__name__)

CERT_SECRET = "default"
ROOT_SECRET = "ROOTCA"


class SdsError(Exception):
    """The SDS socket cannot be served; the message names the path and why."""


def build_secret(name: str, manager: SecretManager) -> secret_pb2.Secret | None:
    """The secret `name` as of now, or None when the agent does not have it (yet)."""
    if name == CERT_SECRET and manager.credential is not None:
        cred = manager.credential
        return secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=cred.chain_pem),
                private_key=base_pb2.DataSource(inline_bytes=cred.key_pem),
            ),
        )
    if name == ROOT_SECRET and manager.bundle is not None:
        return secret_pb2.Secret(
            name=name,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=manager.bundle.pem)
            ),
        )
    return None


class SdsService(SecretDiscovery):
    """The agent's secrets, as its SecretManager holds them."""

    names = frozenset({CERT_SECRET, ROOT_SECRET})

    def __init__(self, manager: SecretManager) -> None:
        super().__init__(on_sent=lambda name: metrics.SDS_PUSHES.labels(secret=name).inc())
        self.manager = manager

    @property
    def version(self) -> int:
        return self.manager.version

    async def wait_change(self, seen: int) -> int:
        return await self.manager.wait_change(seen)

    def secret(self, name: str) -> secret_pb2.Secret | None:
        return build_secret(name, self.manager)


class SdsServer:
    """The gRPC server on the Unix socket. `start()` raises SdsError; `stop()` removes the socket."""

    def __init__(self, manager: SecretManager, path: pathlib.Path) -> None:
        self.path = path
        self.service = SdsService(manager)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self._server = await start_unix_server(self.path, what="SDS", register=self.service.register, error=SdsError)
        log.info("serving SDS on %s", self.path)

    async def stop(self, grace: float = 1.0) -> None:
        server, self._server = self._server, None
        await stop_unix_server(server, self.path, grace=grace)
