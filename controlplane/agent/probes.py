"""Application probes the agent runs on the kubelet's behalf.

The injector moves each HTTP, TCP and gRPC probe of an application container to the agent's status
port (`/app-health/<container>/{readyz,livez,startupz}`) and writes the original into the env var
`ISTIO_KUBE_APP_PROBERS`: a JSON object from that path to `{"httpGet"|"tcpSocket"|"grpc": {...},
"timeoutSeconds": N}`. `parse_probers` reads it (the agent refuses to start on a bad one);
`run_probe` performs one probe as the kubelet would:

- httpGet: GET `scheme://host:port/path` (host: the probe's, else the pod's address), HTTPS without
  certificate verification; a status from 200 to 399 passes. Redirects to the same host name are
  followed (at most 10); a redirect to another host is not followed and passes.
- tcpSocket: a TCP connection opens.
- grpc: `grpc.health.v1.Health/Check` for the probe's service answers SERVING.

Every probe finishes within its `timeoutSeconds` (default 1). Unknown fields inside an entry are
ignored, as Istio's agent does, so newer injectors keep working.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from multidict import CIMultiDict
from yarl import URL

from controlplane.jsontext import MAX_ENV_JSON_DEPTH, load_json

PROBERS_ENV = "ISTIO_KUBE_APP_PROBERS"
DEFAULT_TIMEOUT = 1.0
MAX_REDIRECTS = 10
DEFAULT_USER_AGENT = "kube-probe/meshplane"  # the kube-probe/ prefix apps use to recognise probes
_KEY = re.compile(r"/(app-health|app-lifecycle)/[^/]+/(livez|readyz|startupz|prestopz|poststartz)")
_ACTIONS = ("httpGet", "tcpSocket", "grpc")
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


class ProbersError(ValueError):
    """`ISTIO_KUBE_APP_PROBERS` cannot be used; the message names the entry and field at fault."""


@dataclass(frozen=True, kw_only=True)
class HTTPGetAction:
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class TCPSocketAction:
    port: int
    host: str | None = None


@dataclass(frozen=True, kw_only=True)
class GRPCAction:
    port: int
    service: str = ""


@dataclass(frozen=True, kw_only=True)
class Prober:
    action: HTTPGetAction | TCPSocketAction | GRPCAction
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


# -- parsing ------------------------------------------------------------------------------------


def parse_probers(text: str) -> dict[str, Prober]:
    """The probers of `ISTIO_KUBE_APP_PROBERS` by path; empty text means none.

    Raises ProbersError (a ValueError) naming the entry and field when the JSON or its shape is wrong:
    a key not of the form `/app-health/<container>/<readyz|livez|startupz>`, not exactly one action,
    a port that is not a number (named ports must have been resolved by the injector), a bad scheme,
    header or timeout.
    """
    if not text.strip():
        return {}
    try:
        document = load_json(text, max_depth=MAX_ENV_JSON_DEPTH)
    except ValueError as exc:
        raise ProbersError(f"env {PROBERS_ENV}: not JSON ({exc}); it is written by the sidecar injector") from None
    if not isinstance(document, dict):
        raise ProbersError(f"env {PROBERS_ENV}: must be a JSON object of probe path to probe")
    return {path: _prober(path, entry) for path, entry in document.items()}


def _prober(path: str, entry: Any) -> Prober:
    where = f"env {PROBERS_ENV}[{json.dumps(path)}]"
    if not _KEY.fullmatch(path):
        raise ProbersError(f"{where}: the key must look like /app-health/<container>/<readyz|livez|startupz>")
    if not isinstance(entry, dict):
        raise ProbersError(f"{where}: must be an object with one of {', '.join(_ACTIONS)}")
    present = [name for name in _ACTIONS if entry.get(name) is not None]
    if len(present) != 1:
        found = ", ".join(present) or "none"
        raise ProbersError(f"{where}: must have exactly one of {', '.join(_ACTIONS)} (found: {found})")
    name = present[0]
    spec = entry[name]
    if not isinstance(spec, dict):
        raise ProbersError(f"{where}.{name}: must be an object")
    at = f"{where}.{name}"
    port = _port(spec.get("port"), f"{at}.port")
    action: HTTPGetAction | TCPSocketAction | GRPCAction
    if name == "httpGet":
        scheme = spec.get("scheme", "HTTP")
        if scheme not in ("HTTP", "HTTPS"):
            raise ProbersError(f"{at}.scheme: must be HTTP or HTTPS, got {json.dumps(scheme)}")
        probe_path = _string(spec.get("path", "/"), f"{at}.path") or "/"
        action = HTTPGetAction(
            port=port,
            path=probe_path if probe_path.startswith("/") else "/" + probe_path,
            scheme=scheme,
            host=_string(spec.get("host", ""), f"{at}.host") or None,
            headers=_headers(spec.get("httpHeaders"), f"{at}.httpHeaders"),
        )
    elif name == "tcpSocket":
        action = TCPSocketAction(port=port, host=_string(spec.get("host", ""), f"{at}.host") or None)
    else:
        action = GRPCAction(port=port, service=_string(spec.get("service") or "", f"{at}.service"))
    timeout = entry.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ProbersError(f"{where}.timeoutSeconds: must be a positive number of seconds, got {json.dumps(timeout)}")
    return Prober(action=action, timeout=float(timeout))


def _port(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    hint = "; named ports must be resolved to numbers by the injector" if isinstance(value, str) else ""
    raise ProbersError(f"{where}: must be a port number 1-65535, got {json.dumps(value)}{hint}")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ProbersError(f"{where}: must be a string, got {json.dumps(value)}")
    return value


def _headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ProbersError(f"{where}: must be a list of {{name, value}} objects")
    headers = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ProbersError(f"{where}[{index}]: must be an object with a non-empty string name")
        headers.append((item["name"], _string(item.get("value", ""), f"{where}[{index}].value")))
    return tuple(headers)


# -- running ------------------------------------------------------------------------------------


async def run_probe(
    prober: Prober,
    *,
    default_host: str,
    source_address: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ProbeResult:
    """Perform one probe; never raises for anything the application does (refusal, timeout, bad answer).

    `default_host` is where the application is reached when the probe names no host (the pod's IP);
    `source_address`, when set, is the local address the probe connects from (the sidecar uses
    127.0.0.6 so the pod's iptables rules let the probe reach the app directly, not through Envoy).
    `headers` are the kubelet's request headers, forwarded to an HTTP probe (the probe's own
    `httpHeaders` win); their User-Agent also names a gRPC probe's client.
    """
    action = prober.action
    host = getattr(action, "host", None) or default_host
    local = (source_address, 0) if source_address else None
    try:
        async with asyncio.timeout(prober.timeout):
            if isinstance(action, HTTPGetAction):
                return await _http(action, host=host, local=local, headers=headers or {})
            if isinstance(action, TCPSocketAction):
                _, writer = await asyncio.open_connection(host, action.port, local_addr=local)
                writer.close()
                return ProbeResult(True, f"TCP connection to {_join(host, action.port)} opened")
            user_agent = (headers or {}).get("User-Agent", DEFAULT_USER_AGENT)
            return await _grpc(action, host=host, local=local, user_agent=user_agent, rpc_seconds=prober.timeout)
    except TimeoutError:
        return ProbeResult(False, f"{_describe(action, host)}: no answer within {prober.timeout:g} s")
    except (OSError, aiohttp.ClientError, ValueError) as exc:  # ValueError: a host that is no host name
        return ProbeResult(False, f"{_describe(action, host)}: {_reason(exc)}")


def _describe(action: HTTPGetAction | TCPSocketAction | GRPCAction, host: str) -> str:
    if isinstance(action, HTTPGetAction):
        return f"GET {action.scheme.lower()}://{_join(host, action.port)}{action.path}"
    if isinstance(action, TCPSocketAction):
        return f"TCP connect to {_join(host, action.port)}"
    service = f"service {action.service!r}" if action.service else "the server"
    return f"gRPC health check of {service} at {_join(host, action.port)}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # "Connection refused", not asyncio's "Connect call failed (...)"
    return str(exc) or type(exc).__name__


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _http(
    action: HTTPGetAction, *, host: str, local: tuple[str, int] | None, headers: Mapping[str, str]
) -> ProbeResult:
    request_headers: CIMultiDict[str] = CIMultiDict({"User-Agent": DEFAULT_USER_AGENT, "Accept": "*/*"})
    request_headers.update(headers)
    for name in {name.lower() for name, _ in action.headers}:
        request_headers.popall(name, None)
    for name, value in action.headers:
        request_headers.add(name, value)
    url = URL(f"{action.scheme.lower()}://{_join(host, action.port)}{action.path}")
    first_host = url.host
    # A fresh connection per probe, as the kubelet does: an idle keep-alive never fails a probe.
    connector = aiohttp.TCPConnector(ssl=False, force_close=True, local_addr=local)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(MAX_REDIRECTS + 1):
            async with session.get(url, headers=request_headers, allow_redirects=False) as response:
                status = response.status
                location = response.headers.get("Location")
            if 300 <= status < 400 and location:
                target = url.join(URL(location))
                if target.host != first_host:
                    return ProbeResult(True, f"GET {url}: {status}, redirect to another host {target} not followed")
                url = target
                continue
            if 200 <= status < 400:
                return ProbeResult(True, f"GET {url}: {status}")
            return ProbeResult(False, f"GET {url}: HTTP probe failed with statuscode: {status}")
    return ProbeResult(False, f"GET {url}: stopped after {MAX_REDIRECTS} redirects")


async def _grpc(
    action: GRPCAction, *, host: str, local: tuple[str, int] | None, user_agent: str, rpc_seconds: float
) -> ProbeResult:
    """One Health/Check call. grpcio cannot choose the source address of its connections, so the
    agent opens the TCP connection itself and hands grpcio a private relay to it (an abstract Unix
    socket of this network namespace, named at random)."""
    app_reader, app_writer = await asyncio.open_connection(host, action.port, local_addr=local)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    relay: asyncio.Task[None] | None = None
    channel: grpc.aio.Channel | None = None
    try:
        name = f"meshplane-probe-{secrets.token_hex(8)}"
        listener.bind("\0" + name)
        listener.listen(1)
        listener.setblocking(False)
        relay = asyncio.create_task(_relay_once(listener, app_reader, app_writer))
        options = [("grpc.default_authority", _join(host, action.port)), ("grpc.primary_user_agent", user_agent)]
        channel = grpc.aio.insecure_channel(f"unix-abstract:{name}", options=options)
        check = channel.unary_unary(_HEALTH_CHECK, request_serializer=None, response_deserializer=None)
        try:
            answer = await check(encode_health_request(action.service), timeout=rpc_seconds)
        except grpc.aio.AioRpcError as exc:
            return ProbeResult(False, f"{_describe(action, host)}: {_grpc_failure(exc, action.service)}")
        try:
            status = decode_health_status(answer)
        except ValueError as exc:
            return ProbeResult(False, f"{_describe(action, host)}: {exc}")
        verdict = f"{_describe(action, host)}: {_SERVING_STATUS.get(status, str(status))}"
        return ProbeResult(status == 1, verdict)
    finally:
        if channel is not None:
            await channel.close(None)
        if relay is not None:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
        app_writer.close()
        listener.close()


def _grpc_failure(exc: grpc.aio.AioRpcError, service: str) -> str:
    code = exc.code()
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return "the server does not implement grpc.health.v1.Health"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"the health service does not know the service {service!r}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer within the probe's timeout"
    return f"{code.name}: {exc.details() or 'no details'}"


async def _relay_once(
    listener: socket.socket, app_reader: asyncio.StreamReader, app_writer: asyncio.StreamWriter
) -> None:
    """Accept grpcio's one connection and copy bytes both ways until either side closes."""
    conn, _ = await asyncio.get_running_loop().sock_accept(listener)
    grpc_reader, grpc_writer = await asyncio.open_connection(sock=conn)
    try:
        await asyncio.gather(_copy(grpc_reader, app_writer), _copy(app_reader, grpc_writer))
    finally:
        grpc_writer.close()


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass  # the other side went away; closing the sink below tells its peer
    finally:
        sink.close()


# -- grpc.health.v1 messages, encoded by hand -----------------------------------------------------


def encode_health_request(service: str) -> bytes:
    """`HealthCheckRequest{service}`: field 1, length-delimited; an empty service is omitted (proto3)."""
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def decode_health_status(message: bytes) -> int:
    """`HealthCheckResponse.status` (field 1, varint); 0 (UNKNOWN) when absent.

    Skips unknown fields; raises ValueError on a message that is not valid protobuf wire format.
    """
    status, offset = 0, 0
    while offset < len(message):
        key, offset = _read_varint(message, offset)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, offset = _read_varint(message, offset)
            if field == 1:
                status = value
        elif wire == 2:
            length, offset = _read_varint(message, offset)
            offset += length
        elif wire in (1, 5):
            offset += 8 if wire == 1 else 4
        else:
            raise ValueError(f"HealthCheckResponse: unsupported wire type {wire}")
        if offset > len(message):
            raise ValueError("HealthCheckResponse: truncated message")
    return status


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while offset < len(data):
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
    raise ValueError("HealthCheckResponse: truncated varint")
