"""Background rotation of the root and of meshplane's own serving certificate.

Both are driven by a `check()` that decides from a clock (a constructor parameter, so tests can
jump ahead) and a `run()` loop that calls it every `check_interval` seconds.

- `RootRotator`: when at most `rotate_at_remaining` (20%) of the self-signed root's life is left,
  re-issue it from the same key; the bundle keeps the old root until it expires. Plug-in CAs are
  never rotated. Expired roots are dropped from the bundle.
- `ServingRotator`: re-issue the serving certificate once `renew_at_elapsed` (half) of its life
  has passed, or as soon as the CA's authority changes (woken by the CA, not by polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable

from certs.authority import BACKDATE, Authority, KeyMaterialError, life_remaining, now_utc
from certs.ca import CertificateAuthority
from certs.keystore import KeyStore
from certs.serving import ServingCertificate

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]


class RootRotator:
    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        store: KeyStore,
        clock: Clock = now_utc,
        rotate_at_remaining: float = 0.2,
        check_interval: float = 3600.0,
        lifetime: dt.timedelta | None = None,
    ) -> None:
        """`lifetime` of a re-issued root defaults to the current root's own validity period."""
        self.ca = ca
        self.store = store
        self.clock = clock
        self.rotate_at_remaining = rotate_at_remaining
        self.check_interval = check_interval
        self.lifetime = lifetime

    async def check(self) -> bool:
        """Rotate (or prune expired roots) if due; return whether the authority changed.

        Raises KeyMaterialError / OSError when the new material cannot be stored (nothing changes then).
        """
        current = self.ca.current
        now = self.clock()
        if current.plugin or not current.self_signed:
            return False
        if life_remaining(current.cert, now=now) > self.rotate_at_remaining:
            pruned = current.without_expired_roots(now=now)
            if pruned is current:
                return False
            self.ca.replace(await self.store.save_rotated(previous=current, rotated=pruned))
            log.info("dropped expired roots from the trust bundle", extra={"roots": len(pruned.roots)})
            return True
        validity = current.cert.not_valid_after_utc - current.cert.not_valid_before_utc
        lifetime = self.lifetime or validity - BACKDATE  # NotBefore is backdated; keep the same validity
        rotated = current.with_rotated_root(now=now, lifetime=lifetime)
        in_effect: Authority = await self.store.save_rotated(previous=current, rotated=rotated)
        self.ca.replace(in_effect)
        log.info(
            "root certificate re-issued from the same key",
            extra={
                "old_not_after": current.cert.not_valid_after_utc.isoformat(),
                "new_not_after": in_effect.cert.not_valid_after_utc.isoformat(),
                "bundle_roots": len(in_effect.roots),
            },
        )
        return True

    async def run(self) -> None:
        """Check now and then every `check_interval` seconds, forever; storage errors are logged and retried."""
        while True:
            try:
                await self.check()
            except (KeyMaterialError, OSError) as exc:
                log.error("root rotation failed; will retry: %s", exc)
            await asyncio.sleep(self.check_interval)


class ServingRotator:
    def __init__(
        self,
        *,
        serving: ServingCertificate,
        ca: CertificateAuthority,
        clock: Clock = now_utc,
        renew_at_elapsed: float = 0.5,
        check_interval: float = 60.0,
    ) -> None:
        self.serving = serving
        self.ca = ca
        self.clock = clock
        self.renew_at_elapsed = renew_at_elapsed
        self.check_interval = check_interval
        self._wake = asyncio.Event()
        ca.subscribe(lambda _: self._wake.set())

    def due(self) -> str | None:
        """Why the serving certificate should be re-issued now, or None."""
        if self.serving.authority is not self.ca.current:
            return "the CA's root changed"
        leaf = self.serving.chain[0]
        if 1.0 - life_remaining(leaf, now=self.clock()) >= self.renew_at_elapsed:
            return f"{self.renew_at_elapsed:.0%} of its life has passed"
        return None

    def check(self) -> bool:
        """Re-issue if due; return whether it did."""
        reason = self.due()
        if reason is None:
            return False
        self.serving.reissue(self.ca.current)
        log.info("serving certificate re-issued: %s", reason, extra={"generation": self.serving.generation})
        return True

    async def run(self) -> None:
        """Check now, then whenever the CA changes or `check_interval` seconds pass, forever."""
        while True:
            self._wake.clear()
            self.check()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval):
                    await self._wake.wait()
