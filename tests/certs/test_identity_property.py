"""Property: whatever sequence of requests arrives, a certificate only ever names the identity of the
caller as authenticated (client certificate first, then token), never the CSR's or anyone else's."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certs.authenticate import Credentials
from certs.authenticate.localtoken import LocalTokenAuthenticator, load_or_create_key, mint
from certs.keystore import FileKeyStore
from certs.runtime import build_ca
from certs.service import CaError
from tests.certs.helpers import make_csr, spiffe

PEOPLE = [("shop", "cart"), ("shop", "admin"), ("kube-system", "root")]
IDS = [spiffe(ns, sa) for ns, sa in PEOPLE]
FOREIGN = "spiffe://evil.example/ns/shop/sa/cart"
# CSRs are expensive to make; build each kind once and reuse them across examples.
CSRS: dict[str, str] = {"none": make_csr()[0], "two": make_csr(uris=IDS[:2])[0], "foreign": make_csr(uris=[FOREIGN])[0]}
CSRS.update({ident: make_csr(uris=[ident])[0] for ident in IDS})

requests = st.lists(
    st.fixed_dictionaries(
        {
            "token_for": st.sampled_from([*range(len(PEOPLE)), "forged", None]),
            "client_cert": st.none() | st.integers(min_value=0, max_value=50),
            "asks": st.sampled_from(list(CSRS)),
            "ttl": st.sampled_from([0, 60, -1, 90 * 86400 + 1]),
        }
    ),
    min_size=1,
    max_size=8,
)


async def _run(tmp: pathlib.Path, sequence: list[dict[str, Any]]) -> None:
    token_key = load_or_create_key(tmp)
    forger = ec.generate_private_key(ec.SECP256R1())
    runtime = await build_ca(
        store=FileKeyStore(tmp / "ca"),
        serving_hosts=("istiod.istio-system.svc",),
        authenticators=[LocalTokenAuthenticator(public_key=token_key.public_key(), trust_domain="cluster.local")],
    )
    root = runtime.ca.current.cert
    issued: list[tuple[bytes, str]] = []  # (leaf PEM, its identity) from earlier steps, reusable as client certs
    for step in sequence:
        token, token_identity = None, None
        if isinstance(step["token_for"], int):
            ns, sa = PEOPLE[step["token_for"]]
            token, token_identity = mint(key=token_key, namespace=ns, service_account=sa), spiffe(ns, sa)
        elif step["token_for"] == "forged":
            token = mint(key=forger, namespace="kube-system", service_account="root")
        cert_pem, cert_identity = (None, None)
        if step["client_cert"] is not None and issued:
            cert_pem, cert_identity = issued[step["client_cert"] % len(issued)]
        caller = cert_identity or token_identity
        credentials = Credentials(
            metadata={"authorization": f"Bearer {token}"} if token else {}, peer_certificate_pem=cert_pem
        )
        try:
            chain = await runtime.service.create_certificate(
                csr=CSRS[step["asks"]], validity_seconds=step["ttl"], credentials=credentials
            )
        except CaError as exc:
            if caller is None:
                assert exc.code == grpc.StatusCode.UNAUTHENTICATED
            continue
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
        assert caller is not None, f"unauthenticated request got a certificate for {uris}"
        assert uris == [caller], f"caller {caller} got a certificate for {uris}"
        leaf.verify_directly_issued_by(root)
        issued.append((chain[0].encode(), caller))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=requests)
def test_no_request_sequence_yields_a_certificate_for_anyone_but_the_caller(
    tmp_path_factory: Any, sequence: list[dict[str, Any]]
) -> None:
    asyncio.run(_run(tmp_path_factory.mktemp("ca"), sequence))


def test_the_generated_requests_do_exercise_issuance() -> None:
    """Guard against a property that passes vacuously: the simplest valid request succeeds."""

    async def once(tmp: pathlib.Path) -> list[str]:
        key = load_or_create_key(tmp)
        runtime = await build_ca(
            store=FileKeyStore(tmp / "ca"),
            serving_hosts=("x",),
            authenticators=[LocalTokenAuthenticator(public_key=key.public_key(), trust_domain="cluster.local")],
        )
        token = mint(key=key, namespace="shop", service_account="cart", ttl=dt.timedelta(minutes=5))
        return await runtime.service.create_certificate(
            csr=CSRS[IDS[0]],
            validity_seconds=60,
            credentials=Credentials(metadata={"authorization": f"Bearer {token}"}),
        )

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        assert len(asyncio.run(once(pathlib.Path(tmp)))) == 2
