"""`meshplane certificate` against a real `meshplane serve`: a token in, a verified workload certificate out."""

from __future__ import annotations

import datetime as dt
import pathlib
import re
import stat
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.authenticate.localtoken import mint
from tests.helpers.serve import Running, meshplane_cmd


def meshplane(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*meshplane_cmd(), *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def token_for(serve: Running, namespace: str, service_account: str) -> str:
    result = meshplane(
        "token", "--namespace", namespace, "--service-account", service_account, "--state-dir", str(serve.state_dir)
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_token_gets_a_certificate_for_its_identity_that_openssl_verifies(
    serve: Running, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "out"
    result = meshplane(
        "certificate",
        "--token-file",
        "-",
        "--ca-address",
        serve.addr("secure-grpc"),
        "--root-cert",
        str(serve.root_cert),
        "--ttl",
        "2h",
        "--out",
        str(out),
        stdin=token_for(serve, "shop", "cart") + "\n",
    )
    assert result.returncode == 0, result.stderr
    line = re.fullmatch(
        r"spiffe://cluster\.local/ns/shop/sa/cart valid until (\S+ \S+) UTC, issued by O=cluster\.local\n",
        result.stdout,
    )
    assert line, result.stdout
    until = dt.datetime.strptime(line.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    assert dt.timedelta(hours=1) < until - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)

    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "root-cert.pem"), str(out / "cert-chain.pem")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    leaf = x509.load_pem_x509_certificates((out / "cert-chain.pem").read_bytes())[0]
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert leaf.public_key().public_bytes(der, public) == key.public_key().public_bytes(der, public)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/shop/sa/cart"]


def test_a_token_signed_by_another_key_is_refused_with_unauthenticated(serve: Running) -> None:
    forged = mint(
        key=ec.generate_private_key(ec.SECP256R1()),
        namespace="shop",
        service_account="cart",
        ttl=dt.timedelta(hours=1),
    )
    result = meshplane(
        "certificate",
        "--token",
        forged,
        "--ca-address",
        serve.addr("secure-grpc"),
        "--root-cert",
        str(serve.root_cert),
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert f"the CA at {serve.addr('secure-grpc')} answered UNAUTHENTICATED: " in result.stderr
    assert "signature does not verify" in result.stderr, "the server's own message is shown"


def test_a_missing_root_file_names_the_path_and_the_flag(serve: Running, tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nowhere" / "root-cert.pem"
    result = meshplane(
        "certificate",
        "--token",
        token_for(serve, "shop", "cart"),
        "--ca-address",
        serve.addr("secure-grpc"),
        "--root-cert",
        str(missing),
    )
    assert result.returncode == 2
    assert f"--root-cert: {missing} does not exist" in result.stderr
    assert result.stdout == ""
