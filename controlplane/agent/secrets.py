"""The workload certificate over time: obtain, rotate, follow the token and root files.

`SecretManager.run()` never returns on its own and never gives up: while the root file is missing,
the token is missing or the CA is unreachable or refuses, it keeps the current certificate (if it
has one), logs what it waits for, and retries with backoff (1 s doubling to 30 s). A change of the
token or root file retries at once. Readers wait for a new `version` with `wait_change`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import hashlib
import logging
import pathlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controlplane.agent import metrics
from controlplane.agent.caclient import CaCallError, CaClient, CaRequest
from controlplane.agent.credential import (
    Credential,
    CredentialError,
    credential_from_chain,
    fingerprint,
    generate_key,
    load_roots,
    make_csr,
)

log = logging.getLogger(__name__)
SERIALS_KEPT = 32


@dataclass(frozen=True)
class Bundle:
    roots: tuple[x509.Certificate, ...]
    pem: bytes


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _FileWatch:
    """Notices when a file's contents change (polling: projected volumes swap symlinks, which inotify misses)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.digest: str | None = None

    def read(self) -> bytes | None:
        try:
            data = self.path.read_bytes()
        except OSError:
            self.digest = None
            return None
        self.digest = hashlib.sha256(data).hexdigest()
        return data

    def changed(self) -> bool:
        try:
            digest: str | None = hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            digest = None
        return digest != self.digest


class SecretManager:
    def __init__(
        self,
        *,
        identity: str,
        client: CaClient,
        token_file: pathlib.Path,
        root_file: pathlib.Path,
        key_algorithm: str = "ecdsa-p256",
        ttl_seconds: float = 86400.0,
        backoff: tuple[float, float] = (1.0, 30.0),
        poll_interval: float = 1.0,
        jitter: Callable[[], float] = lambda: random.uniform(0.0, 0.1),
    ) -> None:
        self.identity = identity
        self.client = client
        self.key_algorithm = key_algorithm
        self.ttl_seconds = ttl_seconds
        self.backoff = backoff
        self.poll_interval = poll_interval
        self.jitter = jitter
        self._token = _FileWatch(token_file)
        self._root = _FileWatch(root_file)
        self.credential: Credential | None = None
        self.bundle: Bundle | None = None
        self.version = 0
        self.rotations = 0
        self.serials: collections.deque[str] = collections.deque(maxlen=SERIALS_KEPT)
        self.next_rotation: dt.datetime | None = None
        self.waiting_for = "the first certificate"
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()

    # -- readers -----------------------------------------------------------------------------------

    async def wait_change(self, seen: int) -> int:
        """Wait until `version` differs from `seen`; returns the current version."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.version != seen)
            return self.version

    def info(self) -> dict[str, Any]:
        """The `/debug/certs` document (docs/agent.md)."""
        cred = self.credential
        return {
            "identity": self.identity,
            "serial": cred.serial if cred else None,
            "not_before": cred.not_before.isoformat() if cred else None,
            "not_after": cred.not_after.isoformat() if cred else None,
            "next_rotation": self.next_rotation.isoformat() if self.next_rotation else None,
            "rotations": self.rotations,
            "serials": list(self.serials),
            "root_fingerprints": [fingerprint(r) for r in self.bundle.roots] if self.bundle else [],
            "waiting_for": self.waiting_for,
        }

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch_files(), name="agent-file-watch")
        try:
            await self._rotate_forever()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _rotate_forever(self) -> None:
        delay = self.backoff[0]
        while True:
            if await self._attempt():
                delay = self.backoff[0]
                assert self.credential is not None
                self.next_rotation = self.credential.renew_at(self.jitter())
                wait = (self.next_rotation - _now()).total_seconds()
                log.info(
                    "certificate for %s, serial %s, valid until %s; next rotation at %s",
                    self.identity, self.credential.serial, self.credential.not_after.isoformat(),
                    self.next_rotation.isoformat(),
                )  # fmt: skip
            else:
                wait = delay * random.uniform(0.8, 1.0)
                delay = min(delay * 2, self.backoff[1])
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await self._wake.wait()

    async def _attempt(self) -> bool:
        """Load the roots, then ask for a certificate. True on success; False after logging why not."""
        if (self.bundle is None or self._root.digest is None) and not self._load_roots():
            return False
        assert self.bundle is not None
        token_bytes = self._token.read()
        token = token_bytes.decode(errors="replace").strip() if token_bytes else None
        current = self.credential
        if not token and current is None:
            self._waiting(f"the token file {self._token.path} (mount the istio-token volume or pass --token-file)")
            return False
        key = generate_key(self.key_algorithm)
        request = CaRequest(
            csr=make_csr(key, self.identity),
            ttl_seconds=int(self.ttl_seconds),
            token=token,
            client_key_pem=current.key_pem if current and current.not_after > _now() else None,
            client_chain_pem=current.chain_pem if current and current.not_after > _now() else None,
        )
        try:
            chain = await self.client.create_certificate(request, roots_pem=self.bundle.pem)
            credential, _ = credential_from_chain(
                chain, key=key, identity=self.identity, roots=self.bundle.roots, now=_now()
            )
        except CaCallError as exc:
            metrics.CA_ERRORS.labels(code=exc.code.name).inc()
            self._waiting(self._explain(exc))
            return False
        except CredentialError as exc:
            metrics.CA_ERRORS.labels(code="BAD_RESPONSE").inc()
            self._waiting(f"a usable certificate from the CA at {self.client.address}: {exc}")
            return False
        await self._publish(credential=credential)
        self.rotations += 1
        self.serials.append(credential.serial)
        metrics.CERT_EXPIRY.set(credential.not_after.timestamp())
        metrics.ROTATIONS.inc()
        self.waiting_for = ""
        return True

    def _explain(self, exc: CaCallError) -> str:
        where = f"the CA at {self.client.address}"
        if exc.code.name == "UNAVAILABLE" and "handshake" in exc.detail.lower():
            return (
                f"{where}: TLS handshake failed ({exc.detail}); check that {self._root.path} holds the mesh root "
                f"and that the server's certificate carries the DNS name {self.client.server_name} (--istiod-san)"
            )
        if exc.transient:
            return f"{where} ({exc.code.name}: {exc.detail})"
        return f"{where} to accept the request: it answered {exc.code.name}: {exc.detail}"

    def _waiting(self, what: str) -> None:
        held = self.credential
        keep = f"; keeping certificate {held.serial} valid until {held.not_after.isoformat()}" if held else ""
        if what != self.waiting_for:
            log.warning("waiting for %s%s", what, keep)
        else:
            log.debug("still waiting for %s", what)
        self.waiting_for = what

    def _load_roots(self) -> bool:
        data = self._root.read()
        if data is None:
            self._waiting(f"the root certificate file {self._root.path} (mount istio-ca-root-cert or pass --root-cert)")
            return False
        try:
            roots = load_roots(data, source=str(self._root.path))
        except CredentialError as exc:
            self._root.digest = None
            self._waiting(f"a valid root certificate file: {exc}")
            return False
        pem = b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots)
        if self.bundle is None or self.bundle.pem != pem:
            log.info("trusting %d root certificate(s) from %s", len(roots), self._root.path)
            self.bundle = Bundle(roots=roots, pem=pem)
            return True
        return True

    async def _publish(self, *, credential: Credential | None = None) -> None:
        async with self._changed:
            if credential is not None:
                self.credential = credential
            self.version += 1
            self._changed.notify_all()

    async def _watch_files(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            if self._root.changed():
                before = self.bundle
                if self._load_roots() and self.bundle is not before:
                    await self._publish()
                    self._wake.set()  # a new root may be what the CA handshake waited for
            if self._token.changed() and self.waiting_for:
                self._token.read()
                log.info("token file %s changed; asking the CA again", self._token.path)
                self._wake.set()
