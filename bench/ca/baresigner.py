"""The floor for bench/ca: a bare single-process grpc.aio signer of the Istio CA service.

Native gRPC TLS (no client certificate asked), then for each CSR: parse it, check its signature,
sign a leaf for its SAN with an ECDSA P-256 root, and return [leaf, root]. No authentication, no
policy, no worker processes: the least a Python gRPC CA can do per request on one event loop.

Run as `python -m bench.ca.baresigner --dir DIR`: it writes `DIR/root-cert.pem`, listens on
127.0.0.1 (an ephemeral port), prints `{"port": N}` on one line, and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import pathlib
import sys

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protos.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc

SERVER_NAME = "istiod.istio-system.svc"


def _name(org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])


def _root(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name("bench root"))
        .issuer_name(_name("bench root"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


class BareSigner(ca_pb2_grpc.IstioCertificateServiceServicer):
    def __init__(self, key: ec.EllipticCurvePrivateKey, root: x509.Certificate) -> None:
        self.key = key
        self.root = root
        self.root_pem = root.public_bytes(serialization.Encoding.PEM).decode()

    async def CreateCertificate(
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> ca_pb2.IstioCertificateResponse:
        csr = x509.load_pem_x509_csr(request.csr.encode())
        if not csr.is_signature_valid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad CSR signature")
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        now = dt.datetime.now(dt.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=24))
            .add_extension(san, critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return ca_pb2.IstioCertificateResponse(
            cert_chain=[leaf.public_bytes(serialization.Encoding.PEM).decode(), self.root_pem]
        )


async def serve(directory: pathlib.Path) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _root(root_key)
    serving_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    serving = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root.subject)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    root_pem = root.public_bytes(serialization.Encoding.PEM)
    (directory / "root-cert.pem").write_bytes(root_pem)
    credentials = grpc.ssl_server_credentials(
        [
            (
                serving_key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
                serving.public_bytes(serialization.Encoding.PEM) + root_pem,
            )
        ]
    )
    server = grpc.aio.server()
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(BareSigner(root_key, root), server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the coordinator closes stdin
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=pathlib.Path, required=True, help="where to write root-cert.pem")
    asyncio.run(serve(parser.parse_args().dir))


if __name__ == "__main__":
    main()
