"""The connection to the Kubernetes API server: config loading and raw JSON requests.

`KubeApi.connect(kubeconfig=...)` loads kubeconfig files (`controlplane.kube.kubeconfig` finds and
merges them as kubectl does), or the in-cluster service account when none is given, through
kubernetes-asyncio, and keeps one `ApiClient`. Requests go through that client's raw API
(`call_api`), so authentication, TLS and proxies are kubernetes-asyncio's; bodies are plain dicts
in the API's own camelCase JSON, never generated model classes.

Errors:
- a kubeconfig that is missing, unreadable, not YAML or unusable (no current context, unknown
  cluster or user, bad certificate path) raises `SettingsError` naming the file;
- no kubeconfig outside a cluster raises `SettingsError` saying what to pass instead;
- an HTTP error answer raises `KubeApiError` with the Status reason and message, and
  `retry_after` from a `Retry-After` header (429 and 503 answers carry one) or the Status's
  `details.retryAfterSeconds`, at most `MAX_RETRY_AFTER` seconds;
- transport failures (refused, reset, timeouts) surface as aiohttp/OS errors for the caller's
  retry loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from controlplane.kube import kubeconfig as kubeconfig_files
from controlplane.kube.kubeconfig import KubeconfigFiles
from controlplane.literals import natural
from controlplane.settings import SettingsError

if TYPE_CHECKING:
    from kubernetes_asyncio import client as k8s_client

JsonObject = dict[str, Any]
Query = Sequence[tuple[str, str]]

AUTH_SETTINGS = ["BearerToken"]

MAX_RETRY_AFTER = 60.0
"""The longest wait an answer can ask for: a server (or a proxy before it) asking for hours, or for
more seconds than a float holds, must not stall a watch or start-up for that long."""


class KubeApiError(Exception):
    """The API server answered with an error status (a `Status` body when it sent one)."""

    def __init__(
        self,
        *,
        status: int,
        reason: str,
        message: str,
        retry_after: float | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.body = body or {}

    @property
    def expired(self) -> bool:
        """410 Gone / reason Expired: the resourceVersion asked for is no longer retained."""
        return self.status == 410 or self.reason in ("Expired", "Gone")

    @classmethod
    def from_status(cls, status_obj: Mapping[str, Any], *, http_status: int | None = None) -> KubeApiError:
        code = int(status_obj.get("code") or http_status or 0)
        details = status_obj.get("details") or {}
        retry = details.get("retryAfterSeconds") if isinstance(details, Mapping) else None
        return cls(
            status=code,
            reason=str(status_obj.get("reason") or ""),
            message=str(status_obj.get("message") or ""),
            retry_after=_bounded_wait(retry),
            body=status_obj,
        )


def _bounded_wait(seconds: Any) -> float | None:
    """`seconds` (a number from a Status's details) within 0..MAX_RETRY_AFTER, None when not a number."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    if isinstance(seconds, float) and math.isnan(seconds):
        return None
    return float(min(max(seconds, 0), MAX_RETRY_AFTER))  # an int too large for a float is never converted


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The header's delay in seconds (RFC 9110: digits only), bounded; None for an HTTP date or
    anything else, which leaves the wait to the caller's backoff."""
    seconds = natural(headers.get("Retry-After", "").strip())
    return None if seconds is None else _bounded_wait(seconds)


async def error_from_response(response: aiohttp.ClientResponse) -> KubeApiError:
    """Read an error answer into a KubeApiError (Status body if JSON, else the raw text)."""
    text = await response.text(errors="replace")
    retry = _retry_after(response.headers)
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        error = KubeApiError.from_status(body, http_status=response.status)
        error.status = response.status
        if retry is not None:
            error.retry_after = retry
        return error
    return KubeApiError(
        status=response.status, reason=response.reason or "", message=text.strip()[:500], retry_after=retry
    )


class KubeApi:
    """One API server connection. Use `connect()`; `close()` when done."""

    def __init__(self, api_client: k8s_client.ApiClient, *, description: str) -> None:
        self.api_client = api_client
        self.description = description

    @classmethod
    async def connect(
        cls,
        *,
        kubeconfig: KubeconfigFiles | pathlib.Path | None,
        context: str | None = None,
        no_kubeconfig_hint: str = "pass --kubeconfig FILE, or --config-dir DIR for local mode",
    ) -> KubeApi:
        """Load `kubeconfig`, its files merged as kubectl merges them (a path: that file alone), or the
        in-cluster config when None; raise SettingsError if unusable (when there is neither, its
        message ends with `no_kubeconfig_hint`, what the caller's user can do)."""
        # Imported here: kubernetes-asyncio loads every generated API and model class (about half a
        # second), which local mode, the agent and the other commands never need.
        from kubernetes_asyncio import client as k8s_client
        from kubernetes_asyncio import config as k8s_config

        configuration = k8s_client.Configuration()
        files = KubeconfigFiles.explicit(kubeconfig) if isinstance(kubeconfig, pathlib.Path) else kubeconfig
        if files is not None:
            merged = kubeconfig_files.load(files, context)
            try:
                await k8s_config.load_kube_config_from_dict(config_dict=merged, client_configuration=configuration)
            except (k8s_config.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
                raise SettingsError(f"{files.label}: {exc}") from None
            description = f"kubeconfig {files}"
        else:
            if context is not None:
                raise SettingsError(f"--context {context}: there is no kubeconfig to find it in; {no_kubeconfig_hint}")
            if not os.environ.get("KUBERNETES_SERVICE_HOST"):
                raise SettingsError(
                    "no kubeconfig and not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset); "
                    + no_kubeconfig_hint
                )
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except k8s_config.ConfigException as exc:
                raise SettingsError(f"in-cluster Kubernetes config is unusable: {exc}") from None
            description = "in-cluster service account"
        try:
            api_client = k8s_client.ApiClient(configuration=configuration)
        except (OSError, ValueError) as exc:  # e.g. an unreadable CA or client certificate
            raise SettingsError(f"{files.label if files else 'in-cluster config'}: {exc}") from None
        return cls(api_client, description=description)

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    async def close(self) -> None:
        await self.api_client.close()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: Any = None,
        content_type: str = "application/json",
        client_timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        response: aiohttp.ClientResponse = await self.api_client.call_api(
            path,
            method,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=AUTH_SETTINGS,
            _preload_content=False,
            _request_timeout=client_timeout,
        )
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: Any = None,
        content_type: str = "application/json",
        request_timeout: float = 30.0,
    ) -> JsonObject:
        """One request; the JSON answer as a dict. Raises KubeApiError for a non-2xx answer."""
        response = await self._send(
            method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            client_timeout=aiohttp.ClientTimeout(total=request_timeout),
        )
        async with response:
            if not 200 <= response.status < 300:
                raise await error_from_response(response)
            try:
                data = await response.json(content_type=None)
            except ValueError as exc:
                raise KubeApiError(
                    status=response.status, reason="BadResponse", message=f"answer is not JSON: {exc}"
                ) from None
        if not isinstance(data, dict):
            raise KubeApiError(status=response.status, reason="BadResponse", message="answer is not a JSON object")
        return data

    @contextlib.asynccontextmanager
    async def stream(self, path: str, *, query: Query, stream_timeout: float) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streaming GET (a watch). The response has status 200; other answers raise KubeApiError.

        `stream_timeout` bounds the whole stream (set it above the server-side `timeoutSeconds`).
        """
        response = await self._send(
            "GET", path, query=query, client_timeout=aiohttp.ClientTimeout(total=stream_timeout, sock_connect=30)
        )
        async with response:
            if response.status != 200:
                raise await error_from_response(response)
            yield response
