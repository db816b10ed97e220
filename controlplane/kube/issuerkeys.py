"""The cluster's service-account issuer keys, fetched from the API server for the CA's token check.

The contract is `certs.authenticate.kubejwt.IssuerKeySource` (duck-typed: this package never imports
certs/, so the caller hands in `parse`, which turns the JSON Web Key Set into its key type and raises
ValueError for a document it cannot use). The keys are `GET /openid/v1/jwks` (service-account issuer
discovery; Kubernetes' default RBAC grants it to every service account).

- `refresh()` fetches again unless a fetch was tried within `min_interval` (30 s): a client sending
  tokens with made-up key ids makes meshplane ask at most twice a minute. Callers that ask while a
  fetch runs share it. It returns a new key set only after a successful fetch, so a caller can tell
  "the cluster publishes no such key now" from "no newer keys could be had".
- `run()` fetches every `interval` (10 min), so keys the cluster rotates in or out are followed.
- A failed fetch (API unreachable, 403 or 404, a document that is no key set) keeps the keys fetched
  before, and is logged when the state changes (working -> failing -> working), not on every try.
  Before the first success `current()` is None: the CA then reviews every token, as without keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sized
from typing import Generic, TypeVar

import aiohttp

from controlplane.kube.client import KubeApi, KubeApiError

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Sized)
PATH = "/openid/v1/jwks"
MIN_INTERVAL_S = 30.0
INTERVAL_S = 600.0
FETCH_TIMEOUT_S = 10.0


class KubeIssuerKeys(Generic[K]):
    def __init__(
        self,
        api: KubeApi,
        *,
        parse: Callable[[object], K],
        min_interval: float = MIN_INTERVAL_S,
        interval: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.parse = parse
        self.min_interval = min_interval
        self.interval = interval
        self.clock = clock
        self.fetches = 0  # attempts, for operators and tests
        self.last_error = ""  # why the last attempt failed; "" after a success
        self._keys: K | None = None
        self._tried: float | None = None
        self._running: asyncio.Task[None] | None = None

    def current(self) -> K | None:
        return self._keys

    async def refresh(self) -> K | None:
        if self._running is None:
            if self._tried is not None and self.clock() - self._tried < self.min_interval:
                return self._keys
            self._running = asyncio.ensure_future(self._fetch())
        running = self._running
        try:
            await asyncio.shield(running)
        finally:
            if running.done() and self._running is running:
                self._running = None
        return self._keys

    async def run(self) -> None:
        """Fetch now and every `interval` until cancelled."""
        while True:
            self._tried = None  # due, whatever refresh() did meanwhile
            await self.refresh()
            await asyncio.sleep(self.interval)

    async def _fetch(self) -> None:
        self._tried = self.clock()
        self.fetches += 1
        try:
            document = await self.api.request("GET", PATH, request_timeout=FETCH_TIMEOUT_S)
            keys = self.parse(document)
        except (KubeApiError, ValueError) as exc:
            self._failed(f"GET {PATH}: {exc}")
            return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._failed(f"GET {PATH}: API server {self.api.host} unreachable: {str(exc) or type(exc).__name__}")
            return
        if self.last_error or self._keys is None:
            log.info("service-account issuer keys fetched", extra={"keys": len(keys)})
        self._keys = keys
        self.last_error = ""

    def _failed(self, why: str) -> None:
        if not self.last_error:
            kept = "keeping the keys fetched before" if self._keys is not None else "every token is reviewed"
            log.warning("service-account issuer keys: %s; %s", why, kept)
        self.last_error = why
