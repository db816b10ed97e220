"""The webhook's listener: aiohttp's TCP site plus a cap on open connections.

`WebhookSite(runner, host, port, ssl_context=...)` takes the same arguments as `web.TCPSite` for an
`AppRunner` of `webhook_app(...)`, and applies the app's `Limits`:
- at most `max_connections` TLS connections are open at once; a connection beyond that is closed
  as soon as its TLS handshake completes, without an HTTP answer (the API server retries or applies
  the webhook's failurePolicy), and counted in `sidecar_injection_connections_refused_total` (and
  `meshplane_connections_refused_total{listener="webhook"}`: `controlplane.listeners.CappedSite`);
- a TLS handshake must complete within `header_timeout`, so connections that never finish one are
  dropped too. (Until then a connection is not counted: time, not the cap, bounds those.)
"""

from __future__ import annotations

import ssl

from aiohttp import web

from controlplane.listeners import LISTEN_BACKLOG, CappedSite
from webhook import metrics
from webhook.app import WEBHOOK_LIMITS


class WebhookSite(CappedSite):
    """A TCP(+TLS) site for the webhook app with its connection cap and handshake timeout."""

    __slots__ = ()

    def __init__(
        self,
        runner: web.AppRunner,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = LISTEN_BACKLOG,
        reuse_address: bool | None = None,
    ) -> None:
        limits = runner.app[WEBHOOK_LIMITS]
        super().__init__(
            runner,
            host,
            port,
            listener="webhook",
            cap=limits.max_connections,
            ssl_context=ssl_context,
            handshake_timeout=limits.header_timeout,
            refused=metrics.connections_refused_total.inc,
            backlog=backlog,
            reuse_address=reuse_address,
        )
