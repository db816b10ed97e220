"""The stand-in app the kubelet runs for every image that is not meshplane's own.

`python -m tests.kubesim.standin --http PORT [--http PORT ...] [--grpc PORT ...] [--name NAME]`

HTTP/1.1 on 0.0.0.0:PORT (keep-alive, chunked request bodies): every path and method answers 200 with a
JSON body describing the request - `method`, `path` (the request target, query included), `host`,
`headers` (lower-case names; repeated headers joined with ", "), `pod` (env POD_NAME, else HOSTNAME),
`name` (`--name`) and `port` (the serving port) - so a test reads `x-forwarded-client-cert` to see the
caller's identity. `/status/<code>` answers `<code>` (100-599 with a body unless the code forbids one),
`/delay/<ms>` answers 200 after `<ms>` milliseconds (at most 60000). A request that cannot be parsed gets
400 and the connection is closed.

gRPC on PORT (plaintext HTTP/2): `grpc.health.v1.Health` Check and Watch (SERVING for "" and
`kubesim.Echo`, NOT_FOUND / SERVICE_UNKNOWN for other names) and `/kubesim.Echo/Echo`, which returns the
request bytes unchanged and the pod name, serving port and the caller's `x-forwarded-client-cert` (when
sent) as trailing metadata. grpcio is imported only when a gRPC port is asked for.

Port 0 picks a free port. One line per listening port goes to stderr: `<name>: serving <proto> on
0.0.0.0:<port>`. SIGTERM (or SIGINT): stop accepting, finish in-flight requests (health turns NOT_SERVING),
exit 0 within a second. Invalid flags exit 2 with argparse's message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

MAX_HEAD = 64 * 1024
MAX_DELAY_MS = 60_000
GRACE = 0.8  # seconds in-flight requests get after SIGTERM
ECHO_SERVICE = "kubesim.Echo"
HEALTH_SERVICE = "grpc.health.v1.Health"
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3


@dataclass(frozen=True, kw_only=True)
class Options:
    http: tuple[int, ...]
    grpc: tuple[int, ...]
    name: str


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be a number from 0 to 65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be a number from 0 to 65535")
    return port


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the command line; argparse exits 2 with its message on bad input."""
    parser = argparse.ArgumentParser(prog="python -m tests.kubesim.standin", description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=_port, action="append", default=[], metavar="PORT", help="serve HTTP on PORT")
    parser.add_argument("--grpc", type=_port, action="append", default=[], metavar="PORT", help="serve gRPC on PORT")
    parser.add_argument("--name", default="standin", help="the app's name, echoed in every answer")
    args = parser.parse_args(argv)
    if not args.http and not args.grpc:
        parser.error("give at least one --http PORT or --grpc PORT")
    fixed = [p for p in [*args.http, *args.grpc] if p]
    duplicates = sorted({p for p in fixed if fixed.count(p) > 1})
    if duplicates:
        parser.error(f"port {duplicates[0]} is given more than once; each port serves one protocol")
    return Options(http=tuple(args.http), grpc=tuple(args.grpc), name=args.name)


class BadRequest(Exception):
    """The request cannot be parsed; answered 400 and the connection closed."""


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        return "keep-alive" in tokens if self.version == "HTTP/1.0" else "close" not in tokens


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | None:
    """One request from the stream; None at a clean end of stream. Raises BadRequest for malformed input."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("the request head ended early") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest(f"the request head is larger than {MAX_HEAD} bytes") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not parts[1]:
        raise BadRequest(f"not an HTTP/1.x request line: {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line {line[:100]!r}")
        headers.append((name.lower(), value.strip()))
    request = Request(parts[0], parts[1], parts[2], tuple(headers), b"")
    if (request.header("expect") or "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await _read_body(reader, request)
    return Request(request.method, request.target, request.version, request.headers, body)


async def _read_body(reader: asyncio.StreamReader, request: Request) -> bytes:
    try:
        if "chunked" in (request.header("transfer-encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = (await reader.readuntil(b"\r\n")).split(b";")[0].strip()
                size = int(size_line, 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        length = request.header("content-length")
        return await reader.readexactly(int(length)) if length else b""
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise BadRequest("the request body is malformed or ended early") from None


class HttpApp:
    """Answers requests on the ports it serves; tracks in-flight requests so SIGTERM can let them finish."""

    def __init__(self, *, name: str, pod: str) -> None:
        self.name = name
        self.pod = pod
        self.stopping = False
        self.busy = 0
        self.drained = asyncio.Event()
        self.drained.set()
        self.idle: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("sockname")[1]
        try:
            while not self.stopping:
                self.idle.add(writer)
                try:
                    request = await read_request(reader, writer)
                except BadRequest as exc:
                    writer.write(_response(400, {"error": str(exc)}, keep_alive=False, head=False))
                    break
                finally:
                    self.idle.discard(writer)
                if request is None:
                    break
                self.busy += 1
                self.drained.clear()
                try:
                    status, body = await self.answer(request, port)
                    keep = request.keep_alive and not self.stopping
                    writer.write(_response(status, body, keep_alive=keep, head=request.method == "HEAD"))
                    await writer.drain()
                finally:
                    self.busy -= 1
                    if not self.busy:
                        self.drained.set()
                if not keep:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def answer(self, request: Request, port: int) -> tuple[int, dict[str, Any]]:
        path = request.target.split("?", 1)[0]
        segments = path.strip("/").split("/")
        status = 200
        if len(segments) == 2 and segments[0] in ("status", "delay"):
            if not segments[1].isdigit():
                return 400, {"error": f"/{segments[0]}/ takes a number, not {segments[1]!r}"}
            value = int(segments[1])
            if segments[0] == "status":
                if not 100 <= value <= 599:
                    return 400, {"error": f"status {value} is outside 100-599"}
                status = value
            else:
                await asyncio.sleep(min(value, MAX_DELAY_MS) / 1000)
        headers: dict[str, str] = {}
        for key, value_ in request.headers:
            headers[key] = f"{headers[key]}, {value_}" if key in headers else value_
        return status, {
            "method": request.method,
            "path": request.target,
            "host": request.header("host") or "",
            "headers": headers,
            "pod": self.pod,
            "name": self.name,
            "port": port,
        }

    def close_idle(self) -> None:
        for writer in list(self.idle):
            writer.close()


def _response(status: int, body: dict[str, Any], *, keep_alive: bool, head: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    payload = b"" if status in (204, 304) or status < 200 else json.dumps(body, indent=1).encode() + b"\n"
    lines = [f"HTTP/1.1 {status} {reason}"]
    if payload:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else payload)


class Health:
    """The serving state shared by every gRPC port: SERVING until shutdown, then NOT_SERVING."""

    def __init__(self) -> None:
        self.serving = True
        self.changed = asyncio.Event()

    def shut_down(self) -> None:
        self.serving = False
        self.changed.set()

    def status(self) -> int:
        return SERVING if self.serving else NOT_SERVING


def requested_service(message: bytes) -> str:
    """The `service` field (1) of a serialized HealthCheckRequest; ValueError when the bytes are malformed."""

    def varint(pos: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            if pos >= len(message) or shift > 63:
                raise ValueError("truncated varint")
            byte = message[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not byte & 0x80:
                return value, pos

    service, pos = "", 0
    while pos < len(message):
        key, pos = varint(pos)
        wire = key & 7
        if wire == 0:
            _, pos = varint(pos)
        elif wire == 2:
            length, pos = varint(pos)
            if pos + length > len(message):
                raise ValueError("truncated field")
            if key >> 3 == 1:
                service = message[pos : pos + length].decode()
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return service


async def start_grpc(*, port: int, pod: str, health: Health) -> tuple[Any, int]:
    """A started grpc.aio server on 0.0.0.0:`port` and the bound port; OSError when it cannot bind."""
    import grpc
    from grpc import aio

    known = ("", HEALTH_SERVICE, ECHO_SERVICE)

    async def check(request: bytes, context: Any) -> bytes:
        try:
            service = requested_service(request)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad HealthCheckRequest: {exc}")
        if service not in known:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        return bytes([0x08, health.status()])

    async def watch(request: bytes, context: Any) -> Any:
        try:
            service = requested_service(request)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad HealthCheckRequest: {exc}")
        yield bytes([0x08, health.status() if service in known else SERVICE_UNKNOWN])
        await health.changed.wait()
        if service in known:
            yield bytes([0x08, health.status()])

    async def echo(request: bytes, context: Any) -> bytes:
        trailers = [("pod", pod), ("serving-port", str(bound))]
        trailers += [(k, v) for k, v in context.invocation_metadata() if k == "x-forwarded-client-cert"]
        context.set_trailing_metadata(tuple(trailers))
        return request

    server = aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                HEALTH_SERVICE,
                {
                    "Check": grpc.unary_unary_rpc_method_handler(check),
                    "Watch": grpc.unary_stream_rpc_method_handler(watch),
                },
            ),
            grpc.method_handlers_generic_handler(ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),
        )
    )
    try:
        bound = server.add_insecure_port(f"0.0.0.0:{port}")
    except RuntimeError as exc:
        raise OSError(f"gRPC port {port}: {exc}") from None
    if not bound:
        raise OSError(f"gRPC port {port} is not available")
    await server.start()
    return server, bound


async def serve(options: Options) -> None:
    """Serve until SIGTERM/SIGINT, then drain for at most GRACE seconds."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pod = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or ""
    app = HttpApp(name=options.name, pod=pod)
    servers = []
    for port in options.http:
        server = await asyncio.start_server(app.handle, "0.0.0.0", port, limit=MAX_HEAD, reuse_address=True)
        servers.append(server)
        _announce(options.name, "http", server.sockets[0].getsockname()[1])
    health = Health()
    grpc_servers = []
    for port in options.grpc:
        grpc_server, bound = await start_grpc(port=port, pod=pod, health=health)
        grpc_servers.append(grpc_server)
        _announce(options.name, "grpc", bound)
    await stop.wait()
    app.stopping = True
    health.shut_down()
    for server in servers:
        server.close()
    app.close_idle()
    grpc_stops = [asyncio.ensure_future(s.stop(GRACE)) for s in grpc_servers]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(app.drained.wait(), GRACE)
    await asyncio.gather(*grpc_stops, return_exceptions=True)


def _announce(name: str, proto: str, port: int) -> None:
    print(f"{name}: serving {proto} on 0.0.0.0:{port}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        asyncio.run(serve(options))
    except OSError as exc:
        print(f"{options.name}: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
