"""`meshplane agent request` and `meshplane agent wait`: what the injected lifecycle hooks run.

Istio's sidecar template runs these inside the `istio-proxy` container as `pilot-agent request
--debug-port=15020 POST drain` (the native sidecar's preStop hook) and `pilot-agent wait` (the
postStart hook when `holdApplicationUntilProxyStarts` is set); the flags are pilot-agent's.

- `request [--debug-port N] METHOD PATH [BODY]`: one HTTP request to `localhost:N/PATH` (N one of
  Envoy's admin 15000, the debug port 15004, the agent's status port 15020 or the readiness port
  15021); prints the body and exits 0, or exits 1 naming the status and body when it is 400 or
  more, except 404 (as pilot-agent does), or when nothing answers.
- `wait [--timeoutSeconds S] [--periodMillis MS] [--requestTimeoutMillis MS] [--url URL]`: every
  period, GET the readiness URL (`http://localhost:15021/healthz/ready`); exit 0 on the first 200,
  exit 1 with the last error once S seconds have passed.

The host is `localhost`, except where the agent was told to listen elsewhere: Envoy's admin port is
on `ISTIO_META_LOOPBACK_ADDRESS`, the other ports on `MESHPLANE_BIND_ADDRESS` unless it is a
wildcard address (the same env vars the agent reads). Bad flags exit 2 naming the flag.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from controlplane.agent.options import ADMIN_PORT, STATUS_PORT
from controlplane.literals import natural

DEBUG_PORTS = (ADMIN_PORT, 15004, STATUS_PORT, 15021)
REQUEST_TIMEOUT = 60.0
READY_PATH = "/healthz/ready"
READINESS_PORT = 15021
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


class HookError(Exception):
    """The request failed or the proxy did not become ready; the message says what happened."""


def add_parsers(sub: Any) -> None:
    """Add `request` and `wait` to the agent's subcommands."""
    r: argparse.ArgumentParser = sub.add_parser(
        "request",
        help="make an HTTP request to the local Envoy admin or agent status port and print the body",
        description=(
            "Make an HTTP request to a port of this sidecar (Envoy admin by default) and print the answer's body; "
            "exit 1 when it fails. Istio's `pilot-agent request`: the native sidecar's preStop hook runs "
            "`request --debug-port=15020 POST drain`."
        ),
    )
    r.add_argument("method", metavar="METHOD", help="HTTP method, e.g. GET or POST")
    r.add_argument("path", metavar="PATH", help="path, e.g. drain or /stats")
    r.add_argument("body", metavar="BODY", nargs="?", default="", help="request body")
    ports = ", ".join(map(str, DEBUG_PORTS))
    r.add_argument(
        "--debug-port", type=int, default=ADMIN_PORT, help=f"port to call, one of {ports} [default {ADMIN_PORT}]"
    )
    r.set_defaults(func=_run_request)

    w: argparse.ArgumentParser = sub.add_parser(
        "wait",
        help="wait until the sidecar is ready",
        description=(
            "Poll the sidecar's readiness URL until it answers 200; exit 1 on timeout. Istio's `pilot-agent wait`, "
            "the postStart hook that holds the application until the proxy is ready."
        ),
    )
    w.add_argument(
        "--timeoutSeconds", "--timeout", dest="timeout", type=int, default=60, help="give up after this many seconds"
    )
    w.add_argument("--requestTimeoutMillis", dest="request_timeout", type=int, default=500, help="per-request timeout")
    w.add_argument("--periodMillis", dest="period", type=int, default=500, help="time between attempts")
    w.add_argument("--url", default=None, help=f"readiness URL [default http://localhost:{READINESS_PORT}{READY_PATH}]")
    w.set_defaults(func=_run_wait)


def local_host(port: int, env: Mapping[str, str]) -> str:
    """Where this sidecar's `port` listens, from the env vars the agent reads (see the module docstring)."""
    if port == ADMIN_PORT:
        address = env.get("ISTIO_META_LOOPBACK_ADDRESS", "").strip()
    else:
        address = env.get("MESHPLANE_BIND_ADDRESS", "").strip()
    if address in _WILDCARDS:
        return "localhost"
    return f"[{address}]" if ":" in address else address


def request(*, method: str, url: str, body: str = "", timeout: float = REQUEST_TIMEOUT) -> tuple[int, bytes]:
    """One HTTP request; the status and the body. Raises HookError naming the URL when nothing answers."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HookError(f"{url!r} is not an http:// or https:// URL")
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    except ValueError as exc:  # a port that is not a number
        raise HookError(f"{url}: {exc}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(method, target, body=body.encode() if body else None)
        response = connection.getresponse()
        return response.status, response.read()
    except TimeoutError:
        raise HookError(f"{method} {url}: no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc) or type(exc).__name__
        raise HookError(f"{method} {url}: {reason}") from None
    finally:
        connection.close()


def wait_ready(*, url: str, timeout: float, period: float, request_timeout: float) -> None:
    """Poll `url` every `period` seconds (the first time after one period) until it answers 200.

    Raises HookError with the last error once `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt was made"
    while True:
        time.sleep(max(0.0, min(period, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            raise HookError(f"timeout waiting for Envoy proxy to become ready. Last error: {last}")
        try:
            status, _ = request(method="GET", url=url, timeout=request_timeout)
        except HookError as exc:
            last = str(exc)
            continue
        if status == 200:
            return
        last = f"HTTP status code {status}"


def _run_request(args: argparse.Namespace) -> int:
    allowed = {*DEBUG_PORTS, _status_port(os.environ)}
    if args.debug_port not in allowed:
        listed = ", ".join(map(str, sorted(allowed)))
        print(f"request: --debug-port {args.debug_port} is not in the allowed list [{listed}]", file=sys.stderr)
        return 2
    url = f"http://{local_host(args.debug_port, os.environ)}:{args.debug_port}/{args.path.lstrip('/')}"
    try:
        status, body = request(method=args.method.upper(), url=url, body=args.body)
    except HookError as exc:
        print(f"request: {exc}", file=sys.stderr)
        return 1
    text = body.decode(errors="replace")
    if status > 399 and status != 404:
        print(f"request: received unsuccessful status code {status}: {text.strip()}", file=sys.stderr)
        return 1
    print(text)
    return 0


def _run_wait(args: argparse.Namespace) -> int:
    for flag, value, least in (
        ("--timeoutSeconds", args.timeout, 0),
        ("--requestTimeoutMillis", args.request_timeout, 1),
        ("--periodMillis", args.period, 1),
    ):
        if value < least:
            print(f"wait: {flag} must be at least {least}, got {value}", file=sys.stderr)
            return 2
    url = args.url or f"http://{local_host(READINESS_PORT, os.environ)}:{READINESS_PORT}{READY_PATH}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        print(f"wait: --url {url!r} is not an http:// or https:// URL", file=sys.stderr)
        return 2
    print(f"Waiting for Envoy proxy to be ready (timeout: {args.timeout} seconds)...", file=sys.stderr)
    try:
        wait_ready(
            url=url, timeout=args.timeout, period=args.period / 1000, request_timeout=args.request_timeout / 1000
        )
    except HookError as exc:
        print(f"wait: {exc}", file=sys.stderr)
        return 1
    print("Envoy is ready!", file=sys.stderr)
    return 0


def _status_port(env: Mapping[str, str]) -> int:
    text = env.get("MESHPLANE_STATUS_PORT", "").strip()
    port = natural(text)
    return port if port is not None and 0 < port < 65536 else STATUS_PORT
