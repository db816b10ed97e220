"""The CA's current key material, shared by the signing service, the serving certificate and the
root distribution. A root rotation (or a new plug-in bundle) replaces the `Authority` here, and
every subscriber is told.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cryptography import x509

from certs import metrics
from certs.authority import Authority

log = logging.getLogger(__name__)

Listener = Callable[[Authority], object]


class CertificateAuthority:
    def __init__(self, authority: Authority) -> None:
        self._current = authority
        self._listeners: list[Listener] = []
        self.generation = 0
        metrics.root_cert_expiry_timestamp.set(authority.root.not_valid_after_utc.timestamp())

    @property
    def current(self) -> Authority:
        return self._current

    def trusted_issuers(self) -> tuple[x509.Certificate, ...]:
        """Certificates that may have issued a workload certificate: the signer and every trusted root."""
        return (self._current.cert, *self._current.roots)

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(new_authority)` after every `replace`. A listener that raises is logged and skipped."""
        self._listeners.append(listener)

    def replace(self, authority: Authority) -> None:
        """Make `authority` current and notify the subscribers, in subscription order."""
        if authority is self._current:
            return
        self._current = authority
        self.generation += 1
        metrics.root_cert_expiry_timestamp.set(authority.root.not_valid_after_utc.timestamp())
        for listener in list(self._listeners):
            try:
                listener(authority)
            except Exception:
                log.exception("CA change listener %r failed", listener)
