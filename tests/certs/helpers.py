"""Builders for CA tests: key material, CSRs (cryptography and the openssl CLI), chains."""

from __future__ import annotations

import base64
import datetime as dt
import json
import pathlib
import subprocess
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from certs.authority import Authority, self_signed_root
from certs.pem import PrivateKey, cert_pem, generate_key
from certs.runtime import CaRuntime
from controlplane.grpcserver import GrpcServers
from controlplane.settings import Address

TRUST_DOMAIN = "cluster.local"


def spiffe(ns: str, sa: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}"


def make_root(*, lifetime: dt.timedelta = dt.timedelta(days=3650), now: dt.datetime | None = None) -> Authority:
    key = generate_key("ecdsa-p256")
    cert = self_signed_root(key, org=TRUST_DOMAIN, lifetime=lifetime, now=now)
    return Authority(key=key, cert=cert, roots=(cert,))


def make_csr(
    *,
    key: PrivateKey | None = None,
    uris: Sequence[str] = (),
    dns: Sequence[str] = (),
) -> tuple[str, PrivateKey]:
    """A PEM CSR signed by `key` (a new P-256 key by default) asking for `uris` as URI SANs."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def tamper_signature(csr_pem: str) -> str:
    """The same CSR with one byte of its signature flipped (still well-formed DER)."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    sig = csr.signature
    at = bytes(der).rfind(sig)
    der[at + len(sig) // 2] ^= 0x01
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(bytes(der)).decode(), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"


def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def openssl_csr(tmp: pathlib.Path, *, uri: str | None = None, curve: str = "P-256", name: str = "w") -> str:
    """A CSR made by the openssl CLI with an EC key on `curve` (and the URI SAN when given)."""
    key, csr = tmp / f"{name}-key.pem", tmp / f"{name}-csr.pem"
    cmd = ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{curve}", "-nodes"]
    cmd += ["-keyout", str(key), "-out", str(csr), "-subj", "/O=meshplane-test"]
    if uri:
        cmd += ["-addext", f"subjectAltName=URI:{uri}"]
    subprocess.run(cmd, check=True, capture_output=True)
    return csr.read_text()


def openssl_verify(tmp: pathlib.Path, *, ca_file: pathlib.Path, chain: Sequence[str], name: str = "v") -> str:
    """`openssl verify -CAfile ca_file [-untrusted intermediates] leaf`; returns stdout, raises on failure."""
    leaf = tmp / f"{name}-leaf.pem"
    leaf.write_text(chain[0])
    cmd = ["openssl", "verify", "-CAfile", str(ca_file)]
    middle = chain[1:-1]
    if middle:
        untrusted = tmp / f"{name}-untrusted.pem"
        untrusted.write_text("".join(middle))
        cmd += ["-untrusted", str(untrusted)]
    result = subprocess.run([*cmd, str(leaf)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"openssl verify failed: {result.stdout}{result.stderr}"
    return result.stdout


def openssl_text(pem: str) -> str:
    return subprocess.run(
        ["openssl", "x509", "-noout", "-text"], input=pem, capture_output=True, text=True, check=True
    ).stdout


def write_pem(path: pathlib.Path, *certs: x509.Certificate) -> pathlib.Path:
    path.write_bytes(b"".join(cert_pem(c) for c in certs))
    return path


def leaf_uris(pem: str) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


async def start_ca_servers(runtime: CaRuntime) -> GrpcServers:
    """Both gRPC ports on loopback (ports the OS picks, read back from the result) with `runtime`'s CA on
    the secure one only, as `meshplane serve` wires it (Envoy in front); started. The caller stops them."""
    servers = GrpcServers(
        plaintext_addr=Address(host="127.0.0.1", port=0),
        secure_addr=Address(host="127.0.0.1", port=0),
        serving=runtime.serving,
    )
    servers.add(runtime.service.register, plaintext=False, secure=True)
    await servers.start()
    return servers


ES256 = {"alg": "ES256", "typ": "JWT"}


def b64(data: bytes) -> str:
    """base64url without padding, as JWTs encode their parts."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def part(value: object) -> str:
    return b64(json.dumps(value).encode())


def signed(key: ec.EllipticCurvePrivateKey, header: object, claims: object) -> str:
    """A JWT with exactly this header and these claims, with a valid ES256 signature by `key`."""
    signing_input = f"{part(header)}.{part(claims)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
