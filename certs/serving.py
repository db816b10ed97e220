"""The control plane's own TLS serving certificate (webhook :15017 and secure gRPC :15012).

`ServingCertificate.ssl_context()` returns one long-lived `ssl.SSLContext`; `reissue()` loads a
new certificate into that same context, so new handshakes get it while open connections carry on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import ssl
import tempfile
from pathlib import Path

from cryptography import x509

from certs.authority import Authority
from certs.pem import cert_pem, generate_key, key_pem, write_atomic

log = logging.getLogger(__name__)

SERVING_TTL = dt.timedelta(days=1)


def serving_names(*, service: str, namespace: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """DNS SANs: `<service>.<ns>.svc` and `istiod.<ns>.svc`, then configured hosts, deduplicated."""
    names = [f"{service}.{namespace}.svc", f"istiod.{namespace}.svc", *extra]
    return tuple(dict.fromkeys(names))


class ServingCertificate:
    def __init__(self, authority: Authority, *, hosts: tuple[str, ...], ttl: dt.timedelta = SERVING_TTL) -> None:
        self.authority = authority
        self.hosts = hosts
        self.ttl = ttl
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.chain: list[x509.Certificate] = []
        self.key_pem = b""
        self.generation = 0  # bumped on every reissue
        self._reissued = asyncio.Event()  # set (and replaced) by every reissue
        self.reissue()

    def ssl_context(self) -> ssl.SSLContext:
        return self._context

    @property
    def not_after(self) -> dt.datetime:
        return self.chain[0].not_valid_after_utc

    async def wait_reissued(self, seen: int) -> int:
        """The generation, once it is no longer `seen`."""
        while self.generation == seen:
            await self._reissued.wait()
        return self.generation

    def root_pem(self) -> bytes:
        return self.authority.root_pem

    def chain_pem(self) -> bytes:
        return b"".join(cert_pem(c) for c in self.chain)

    def reissue(self, authority: Authority | None = None) -> None:
        """Issue a fresh certificate (optionally from a new authority) and load it for new handshakes."""
        if authority is not None:
            self.authority = authority
        key = generate_key("ecdsa-p256")
        dns = tuple(h for h in self.hosts if not _is_ip(h))
        ips = tuple(h for h in self.hosts if _is_ip(h))
        self.chain = self.authority.issue(public_key=key.public_key(), ttl=self.ttl, dns_names=dns, ips=ips)
        self.key_pem = key_pem(key)
        with tempfile.TemporaryDirectory(prefix="meshplane-serving-") as tmp:
            cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            write_atomic(cert_file, self.chain_pem())
            write_atomic(key_file, self.key_pem, mode=0o600)
            self._context.load_cert_chain(cert_file, key_file)
        self.generation += 1
        reissued, self._reissued = self._reissued, asyncio.Event()
        reissued.set()
        log.info(
            "serving certificate issued",
            extra={"hosts": ",".join(self.hosts), "not_after": self.not_after.isoformat()},
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
