"""meshplane certificate: ask the mesh CA for a workload certificate, as a sidecar agent does.

Makes an ECDSA P-256 key and a CSR for the identity the token names
(spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT, from the token's subject
system:serviceaccount:NAMESPACE:SERVICE_ACCOUNT), calls CreateCertificate on the CA's TLS port with
the token as bearer credential, checks that the answer is for this key and identity and chains to
the root, and prints one line:

    spiffe://cluster.local/ns/shop/sa/cart valid until 2026-01-02 10:55:00 UTC, issued by O=cluster.local

Example, against `make run` (local mode, state dir .meshplane):

    TOKEN=$(meshplane token --namespace shop --service-account cart)
    meshplane certificate --token "$TOKEN" --out certs/

With --out DIR it also writes key.pem (mode 0600), cert-chain.pem (leaf first, without the root)
and root-cert.pem (the trusted root bundle), the file names Istio's agent uses.

The server must present a certificate for --server-name issued under the root in --root-cert; the
default name is the one the agent verifies for the same CA address. Exit status: 0 with a
certificate; 1 when the CA refuses or cannot be reached (the gRPC status name and the server's
message are printed) or its answer is not a usable certificate; 2 for a bad flag, token or root file.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime as dt
import json
import os
import pathlib
import sys
from typing import Any

from certs.authenticate.localtoken import parse_duration
from certs.identity import from_service_account_username, spiffe_id
from controlplane.agent.caclient import CaCallError, CaClient, CaRequest
from controlplane.agent.credential import (
    Credential,
    CredentialError,
    credential_from_chain,
    generate_key,
    load_roots,
    make_csr,
)
from controlplane.agent.grpcxds import CERT_CHAIN, KEY, ROOT
from controlplane.agent.options import default_istiod_san
from controlplane.literals import natural
from controlplane.settings import Settings, SettingsError

PROG = "meshplane certificate"
DEFAULT_CA_ADDRESS = "127.0.0.1:15012"
DEFAULT_TTL = "24h"


def add_parser(sub: Any) -> None:
    state_dir = pathlib.Path(os.environ.get("MESHPLANE_STATE_DIR", str(Settings().state_dir)))
    root_default = str(state_dir / "root-cert.pem")
    trust_default = os.environ.get("MESHPLANE_TRUST_DOMAIN", Settings().trust_domain)
    p: argparse.ArgumentParser = sub.add_parser(
        "certificate",
        help="get a workload certificate from the mesh CA with a token (CreateCertificate over TLS)",
        description=__doc__.replace("`", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    token = p.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="the bearer token (a meshplane token, or a service-account token)")
    token.add_argument("--token-file", help="a file holding the token; - reads it from stdin")
    p.add_argument(
        "--ca-address",
        default=DEFAULT_CA_ADDRESS,
        help=f"the CA's TLS address, host:port [default {DEFAULT_CA_ADDRESS}]",
    )
    p.add_argument(
        "--root-cert",
        default=root_default,
        help=f"the mesh root (trust bundle) to verify the server and the answer with [default {root_default}, "
        "the root that meshplane serve writes to its state dir; env MESHPLANE_STATE_DIR]",
    )
    p.add_argument(
        "--server-name",
        default=None,
        help="the DNS name the server's certificate must carry [default: the agent's choice, the CA "
        "address's host name, or istiod.istio-system.svc for an IP address]",
    )
    p.add_argument(
        "--ttl", default=DEFAULT_TTL, help=f"requested lifetime: 3600, 90s, 15m, 24h [default {DEFAULT_TTL}]"
    )
    p.add_argument(
        "--trust-domain",
        default=trust_default,
        help=f"the SPIFFE trust domain of the identity [env MESHPLANE_TRUST_DOMAIN; default {trust_default}]",
    )
    p.add_argument("--out", metavar="DIR", help="also write key.pem (0600), cert-chain.pem and root-cert.pem here")
    p.set_defaults(func=run)


def identity_of_token(token: str, *, trust_domain: str, field: str) -> str:
    """The SPIFFE identity a JWT's `sub` (system:serviceaccount:NS:SA) names. The signature is not
    checked here (the CA does that). Raises SettingsError naming `field` for anything else."""
    parts = token.split(".")
    if len(parts) != 3:
        raise SettingsError(f"{field}: not a JWT (three base64url parts separated by '.')")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        raise SettingsError(f"{field}: the JWT's claims are not base64url-encoded JSON") from None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(subject, str):
        raise SettingsError(f"{field}: the JWT has no subject (sub), so it names no workload")
    try:
        namespace, service_account = from_service_account_username(subject)
    except ValueError as exc:
        raise SettingsError(f"{field}: {exc}") from None
    return spiffe_id(trust_domain=trust_domain, namespace=namespace, service_account=service_account)


def _read_token(args: argparse.Namespace) -> tuple[str, str]:
    """(token, the flag it came from). Raises SettingsError for an unreadable or empty token."""
    if args.token is not None:
        text, field = args.token, "--token"
    elif args.token_file == "-":
        text, field = sys.stdin.read(), "--token-file -"
    else:
        field = "--token-file"
        try:
            text = pathlib.Path(args.token_file).read_text()
        except OSError as exc:
            raise SettingsError(f"--token-file: cannot read {args.token_file}: {exc.strerror}") from None
    token = text.strip()
    if not token:
        raise SettingsError(f"{field}: the token is empty")
    return token, field


def _read_root(path_text: str) -> bytes:
    path = pathlib.Path(path_text)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SettingsError(
            f"--root-cert: {path.absolute()} does not exist; it is the root-cert.pem in the state dir of the "
            "meshplane serve to call (start it, e.g. with make run, or pass --root-cert FILE)"
        ) from None
    except OSError as exc:
        raise SettingsError(f"--root-cert: cannot read {path.absolute()}: {exc.strerror}") from None


def _write_out(directory: pathlib.Path, credential: Credential, roots_pem: bytes) -> None:
    """key.pem (0600, also when it existed), cert-chain.pem and root-cert.pem in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / KEY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(credential.key_pem)
    (directory / CERT_CHAIN).write_bytes(credential.chain_pem)
    (directory / ROOT).write_bytes(roots_pem)


def run(args: argparse.Namespace) -> int:
    """Print the certificate line; SettingsError (exit 2) names the flag; CA refusals exit 1."""
    token, field = _read_token(args)
    identity = identity_of_token(token, trust_domain=args.trust_domain, field=field)
    try:
        ttl = parse_duration(args.ttl, field="--ttl")
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if ttl.total_seconds() <= 0:
        raise SettingsError(f"--ttl: {args.ttl!r} must be positive")
    address = args.ca_address.strip()
    host, sep, port = address.rpartition(":")
    if not sep or not host or natural(port) is None:
        raise SettingsError(f"--ca-address: {args.ca_address!r} is not host:port (example: {DEFAULT_CA_ADDRESS})")
    roots_pem = _read_root(args.root_cert)
    try:
        roots = load_roots(roots_pem, source=f"--root-cert {args.root_cert}")
    except CredentialError as exc:
        raise SettingsError(str(exc)) from None
    server_name = args.server_name or default_istiod_san(address)
    client = CaClient(address=address, server_name=server_name)
    key = generate_key("ecdsa-p256")
    request = CaRequest(csr=make_csr(key, identity), ttl_seconds=int(ttl.total_seconds()), token=token)
    try:
        chain = asyncio.run(client.create_certificate(request, roots_pem=roots_pem))
        credential, _ = credential_from_chain(
            chain, key=key, identity=identity, roots=roots, now=dt.datetime.now(dt.UTC)
        )
    except CaCallError as exc:
        print(f"{PROG}: the CA at {address} answered {exc.code.name}: {exc.detail}", file=sys.stderr)
        return 1
    except CredentialError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    issuer = credential.leaf.issuer.rfc4514_string() or "(empty subject)"
    until = credential.not_after.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{identity} valid until {until} UTC, issued by {issuer}")
    if args.out:
        out = pathlib.Path(args.out)
        _write_out(out, credential, roots_pem)
        print(f"wrote {out / KEY}, {out / CERT_CHAIN} and {out / ROOT}", file=sys.stderr)
    return 0
