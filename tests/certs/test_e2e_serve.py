"""End to end against a running `meshplane serve` (local mode) over real gRPC+TLS: CSRs from the
openssl CLI, tokens from `meshplane token`, chains checked with `openssl verify`."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from certs.pem import cert_pem
from protos.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.certs.helpers import openssl_csr, openssl_text, openssl_verify
from tests.certs.test_keystore import write_cacerts
from tests.helpers.serve import SERVER_NAME, Running, meshplane_cmd, start_serve

NS, SA = "bookinfo", "reviews"
IDENTITY = f"spiffe://cluster.local/ns/{NS}/sa/{SA}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start_serve(tmp_path_factory.mktemp("serve"))
    try:
        yield running
    finally:
        running.stop()


def token(running: Running, *args: str) -> str:
    result = subprocess.run(
        [*meshplane_cmd(), "token", "--state-dir", str(running.state_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def create(running: Running, csr: str, *, bearer: str | None, ttl: int = 0) -> list[str]:
    credentials = grpc.ssl_channel_credentials(running.root_cert.read_bytes())
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    with grpc.secure_channel(running.addr("secure-grpc"), credentials, options=options) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        metadata = [("authorization", f"Bearer {bearer}")] if bearer else []
        request = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=ttl)
        return list(stub.CreateCertificate(request, metadata=metadata, timeout=30).cert_chain)


def test_openssl_csr_and_meshplane_token_get_a_chain_openssl_verifies(mesh: Running, tmp_path: pathlib.Path) -> None:
    csr = openssl_csr(tmp_path, uri=IDENTITY)
    chain = create(mesh, csr, bearer=token(mesh, "--namespace", NS, "--service-account", SA))
    assert len(chain) == 2  # leaf, root
    assert chain[-1] == mesh.root_cert.read_text()
    assert f"{tmp_path}/v-leaf.pem: OK" in openssl_verify(tmp_path, ca_file=mesh.root_cert, chain=chain)
    text = openssl_text(chain[0])
    assert f"URI:{IDENTITY}" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text


def test_a_csr_without_san_gets_the_token_identity(mesh: Running, tmp_path: pathlib.Path) -> None:
    chain = create(mesh, openssl_csr(tmp_path), bearer=token(mesh, "--namespace", NS, "--service-account", SA))
    assert f"URI:{IDENTITY}" in openssl_text(chain[0])


def _lifetime_seconds(pem: str, tmp: pathlib.Path) -> int:
    import datetime as dt

    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(pem.encode())
    return int((leaf.not_valid_after_utc - leaf.not_valid_before_utc) / dt.timedelta(seconds=1))


def test_ttl_default_is_24h_explicit_ttl_is_honoured_and_the_limit_holds(mesh: Running, tmp_path: pathlib.Path) -> None:
    bearer = token(mesh, "--namespace", NS, "--service-account", SA)
    csr = openssl_csr(tmp_path, uri=IDENTITY)
    assert _lifetime_seconds(create(mesh, csr, bearer=bearer)[0], tmp_path) == 24 * 3600 + 120
    assert _lifetime_seconds(create(mesh, csr, bearer=bearer, ttl=3600)[0], tmp_path) == 3600 + 120
    assert _lifetime_seconds(create(mesh, csr, bearer=bearer, ttl=90 * 86400)[0], tmp_path) == 90 * 86400 + 120
    for bad in (90 * 86400 + 1, -1):
        with pytest.raises(grpc.RpcError) as info:
            create(mesh, csr, bearer=bearer, ttl=bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "validity_duration" in info.value.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("token_args", "code", "text"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED, "no credentials"),
        (
            ["--namespace", NS, "--service-account", SA, "--audience", "kubernetes"],
            grpc.StatusCode.UNAUTHENTICATED,
            "does not include 'istio-ca'",
        ),
        (["--namespace", NS, "--service-account", "ratings"], grpc.StatusCode.PERMISSION_DENIED, IDENTITY),
    ],
    ids=["no-token", "wrong-audience", "another-identity"],
)
def test_refusals_over_the_wire(
    mesh: Running, tmp_path: pathlib.Path, token_args: list[str] | None, code: grpc.StatusCode, text: str
) -> None:
    """The CSR always asks for bookinfo/reviews; the token (if any) says otherwise."""
    bearer = token(mesh, *token_args) if token_args is not None else None
    with pytest.raises(grpc.RpcError) as info:
        create(mesh, openssl_csr(tmp_path, uri=IDENTITY), bearer=bearer)
    assert info.value.code() == code  # type: ignore[attr-defined]
    assert text in info.value.details()  # type: ignore[attr-defined]


def test_ca_metrics_are_exported_under_istios_names(mesh: Running, tmp_path: pathlib.Path) -> None:
    create(mesh, openssl_csr(tmp_path), bearer=token(mesh, "--namespace", NS, "--service-account", SA))
    with urllib.request.urlopen(mesh.metrics_url, timeout=10) as resp:
        body = resp.read().decode()
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines() if line.startswith("citadel_")
    }
    assert samples["citadel_server_csr_count"] >= 1
    assert samples["citadel_server_success_cert_issuance_count"] >= 1
    assert "citadel_server_authentication_failure_count" in samples
    assert samples["citadel_server_root_cert_expiry_timestamp"] > 0


def test_ca_key_is_private_and_the_root_survives_a_restart(tmp_path: pathlib.Path) -> None:
    first = start_serve(tmp_path)
    try:
        root = first.root_cert.read_bytes()
        assert stat.S_IMODE(os.stat(first.state_dir / "ca" / "ca-key.pem").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(first.state_dir / "token-key.pem").st_mode) == 0o600
        bearer = token(first, "--namespace", NS, "--service-account", SA)
    finally:
        first.stop()
    second = start_serve(tmp_path)
    try:
        assert second.root_cert.read_bytes() == root
        chain = create(second, openssl_csr(tmp_path, uri=IDENTITY), bearer=bearer)  # token minted before the restart
        openssl_verify(tmp_path, ca_file=second.root_cert, chain=chain)
    finally:
        second.stop()


@pytest.mark.parametrize("algorithm", ["rsa-2048", "rsa-3072"])
def test_an_rsa_root_can_be_chosen_and_its_leaves_verify(tmp_path: pathlib.Path, algorithm: str) -> None:
    running = start_serve(tmp_path, "--ca-key-algorithm", algorithm)
    try:
        text = subprocess.run(
            ["openssl", "x509", "-noout", "-text", "-in", str(running.root_cert)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        assert f"Public-Key: ({algorithm.removeprefix('rsa-')} bit)" in text and "rsaEncryption" in text
        chain = create(
            running,
            openssl_csr(tmp_path, uri=IDENTITY),
            bearer=token(running, "--namespace", NS, "--service-account", SA),
        )
        assert "OK" in openssl_verify(tmp_path, ca_file=running.root_cert, chain=chain)
    finally:
        running.stop()
    # A restart with a different algorithm keeps the existing root (and says so).
    again = start_serve(tmp_path)
    try:
        assert "not the configured ecdsa-p256" in again.logs()
        assert (
            "rsaEncryption"
            in subprocess.run(
                ["openssl", "x509", "-noout", "-text", "-in", str(again.root_cert)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
    finally:
        again.stop()


def test_plugin_ca_in_the_state_dir_signs_as_intermediate_and_returns_the_full_chain(tmp_path: pathlib.Path) -> None:
    _, intermediate = write_cacerts(tmp_path / "state" / "cacerts")
    running = start_serve(tmp_path)
    try:
        chain = create(
            running,
            openssl_csr(tmp_path, uri=IDENTITY),
            bearer=token(running, "--namespace", NS, "--service-account", SA),
        )
        assert len(chain) == 3  # leaf, intermediate, root
        operator_root = tmp_path / "state" / "cacerts" / "root-cert.pem"
        assert running.root_cert.read_bytes() == operator_root.read_bytes()
        assert "OK" in openssl_verify(tmp_path, ca_file=operator_root, chain=chain)
        assert "Issuer: O = intermediate" in openssl_text(chain[0])
        assert chain[1].encode() == cert_pem(intermediate)
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--namespace", "Bad_NS", "--service-account", "sa"], "--namespace: 'Bad_NS' is not a DNS-1123 label"),
        (["--namespace", "ns", "--service-account", "sa", "--ttl", "soon"], "--ttl: 'soon' is not a duration"),
        (["--namespace", "ns", "--service-account", "sa", "--ttl", "0"], "--ttl: 0 s must be positive"),
    ],
)
def test_meshplane_token_rejects_bad_flags_by_name(tmp_path: pathlib.Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [*meshplane_cmd(), "token", "--state-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_the_maximum_workload_ttl_is_configurable(tmp_path: pathlib.Path) -> None:
    running = start_serve(tmp_path, "--max-workload-cert-ttl", "1h")
    try:
        bearer = token(running, "--namespace", NS, "--service-account", SA)
        csr = openssl_csr(tmp_path, uri=IDENTITY)
        assert _lifetime_seconds(create(running, csr, bearer=bearer, ttl=3600)[0], tmp_path) == 3600 + 120
        with pytest.raises(grpc.RpcError) as info:
            create(running, csr, bearer=bearer, ttl=3601)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "exceeds the maximum of 3600 s" in info.value.details()  # type: ignore[attr-defined]
    finally:
        running.stop()


def test_a_bad_maximum_ttl_flag_is_named(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [*meshplane_cmd(), "serve", "--config-dir", str(tmp_path), "--max-workload-cert-ttl", "forever"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--max-workload-cert-ttl: 'forever' is not a duration" in result.stderr
