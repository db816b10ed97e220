"""Application probes, run for real against small HTTP, HTTPS, TCP and gRPC servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import yaml
from aiohttp import web
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from controlplane.agent.probes import (
    GRPCAction,
    HTTPGetAction,
    Prober,
    ProbersError,
    TCPSocketAction,
    decode_health_status,
    encode_health_request,
    parse_probers,
    run_probe,
)

GOLDENS = pathlib.Path(__file__).parents[1] / "webhook" / "testdata"


# -- peers (also used by test_status) ----------------------------------------------------------


@dataclass
class Seen:
    """What an application server saw of each request: path, headers and the client's address."""

    requests: list[tuple[str, dict[str, str], str]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]


@contextlib.asynccontextmanager
async def serve(app: web.Application, *, host: str = "127.0.0.1", ssl_context: Any = None) -> AsyncIterator[int]:
    """Run `app` on an ephemeral port of `host`; yields the port, stops everything on exit."""
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0, ssl_context=ssl_context)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def application(seen: Seen, release: asyncio.Event) -> web.Application:
    """/ok 200, /fail 500, /slow (answers once `release` is set), /redirect?to=URL, /loop (redirects to itself)."""

    async def record(request: web.Request) -> None:
        seen.requests.append((request.path, dict(request.headers), request.remote or ""))

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text="fine")

    async def fail(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=500, text="broken")

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await release.wait()
        return web.Response(text="late")

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/loop")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/fail", fail)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)
    return app


@contextlib.asynccontextmanager
async def app_server(*, host: str = "127.0.0.1", ssl_context: Any = None) -> AsyncIterator[tuple[int, Seen]]:
    seen, release = Seen(), asyncio.Event()
    async with serve(application(seen, release), host=host, ssl_context=ssl_context) as port:
        try:
            yield port, seen
        finally:
            release.set()  # lets a /slow request finish before the server stops


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connecting to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _health_messages() -> tuple[Any, Any]:
    """grpc.health.v1 messages built by the protobuf library from descriptors: an independent codec."""
    fdp = descriptor_pb2.FileDescriptorProto(name="test_health.proto", package="grpc.health.v1", syntax="proto3")
    req = fdp.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=1)
    resp = fdp.message_type.add(name="HealthCheckResponse")
    enum = resp.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        enum.value.add(name=name, number=number)
    resp.field.add(
        name="status",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
        label=1,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")),
    )


HealthCheckRequest, HealthCheckResponse = _health_messages()


@contextlib.asynccontextmanager
async def grpc_server(statuses: dict[str, int] | None) -> AsyncIterator[tuple[int, list[str]]]:
    """A gRPC server whose Health service answers `statuses` (NOT_FOUND for other services); None:
    no Health service at all. Yields the port and the peers of the calls it received."""
    peers: list[str] = []

    async def check(request: Any, context: grpc.aio.ServicerContext) -> Any:
        peers.append(context.peer())
        assert statuses is not None
        if request.service not in statuses:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return HealthCheckResponse(status=statuses[request.service])

    server = grpc.aio.server()
    if statuses is not None:
        handler = grpc.unary_unary_rpc_method_handler(
            check,
            request_deserializer=HealthCheckRequest.FromString,
            response_serializer=HealthCheckResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler})]
        )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port, peers
    finally:
        await server.stop(None)


def http(path: str, port: int, **extra: Any) -> Prober:
    return Prober(action=HTTPGetAction(port=port, path=path, **extra))


# -- HTTP ---------------------------------------------------------------------------------------


async def test_http_probe_passes_on_200_and_sends_the_probe_headers() -> None:
    async with app_server() as (port, seen):
        prober = http("/ok", port, headers=(("X-Probe", "readiness"),))
        result = await run_probe(prober, default_host="127.0.0.1")
    assert result.ok, result.detail
    [(_, headers, _)] = seen.requests
    assert headers["X-Probe"] == "readiness"
    assert headers["User-Agent"].startswith("kube-probe/")


async def test_http_probe_fails_on_500_naming_the_status() -> None:
    async with app_server() as (port, _):
        result = await run_probe(http("/fail", port), default_host="127.0.0.1")
    assert not result.ok
    assert "500" in result.detail


async def test_http_probe_fails_when_the_app_answers_after_the_timeout() -> None:
    async with app_server() as (port, seen):
        result = await run_probe(http("/slow", port), default_host="127.0.0.1")
    assert not result.ok
    assert "no answer within 1 s" in result.detail
    assert seen.paths() == ["/slow"]


async def test_http_probe_fails_when_the_connection_is_refused(refused_port: int) -> None:
    result = await run_probe(http("/ok", refused_port), default_host="127.0.0.1")
    assert not result.ok
    assert "refused" in result.detail.lower()
    assert f"127.0.0.1:{refused_port}" in result.detail


@pytest.fixture
def self_signed(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed certificate and key made by the openssl CLI."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=app"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_probe_accepts_a_self_signed_certificate(self_signed: tuple[pathlib.Path, pathlib.Path]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed)
    async with app_server(ssl_context=context) as (port, seen):
        result = await run_probe(http("/ok", port, scheme="HTTPS"), default_host="127.0.0.1")
    assert result.ok, result.detail
    assert seen.paths() == ["/ok"]


async def test_redirects_to_the_same_host_are_followed() -> None:
    async with app_server() as (port, seen):
        result = await run_probe(http("/redirect?to=/fail", port), default_host="127.0.0.1")
    assert not result.ok
    assert seen.paths() == ["/redirect", "/fail"]


async def test_a_redirect_loop_fails_after_ten_redirects() -> None:
    async with app_server() as (port, seen):
        result = await run_probe(http("/loop", port), default_host="127.0.0.1")
    assert not result.ok
    assert "10 redirects" in result.detail
    assert len(seen.requests) == 11


async def test_a_redirect_to_another_host_passes_without_being_followed() -> None:
    async with app_server() as (port, seen):
        prober = http(f"/redirect?to=http://localhost:{port}/fail", port)
        result = await run_probe(prober, default_host="127.0.0.1")
    assert result.ok, result.detail
    assert seen.paths() == ["/redirect"]


async def test_the_probe_host_wins_over_the_default_host() -> None:
    async with app_server(host="127.0.0.1") as (port, _):
        named = await run_probe(http("/ok", port, host="127.0.0.1"), default_host="127.0.0.2")
        unnamed = await run_probe(http("/ok", port), default_host="127.0.0.2")
    assert named.ok, named.detail
    assert not unnamed.ok
    assert f"127.0.0.2:{port}" in unnamed.detail


async def test_kubelet_headers_are_forwarded_and_probe_headers_win() -> None:
    async with app_server() as (port, seen):
        prober = http("/ok", port, headers=(("X-Probe", "from-probe"),))
        forwarded = {"User-Agent": "kube-probe/1.33", "X-Probe": "from-kubelet", "X-Trace": "abc"}
        result = await run_probe(prober, default_host="127.0.0.1", headers=forwarded)
    assert result.ok, result.detail
    [(_, headers, _)] = seen.requests
    assert (headers["User-Agent"], headers["X-Probe"], headers["X-Trace"]) == ("kube-probe/1.33", "from-probe", "abc")


async def test_probes_connect_from_the_source_address() -> None:
    async with app_server() as (http_port, seen), grpc_server({"": 1}) as (grpc_port, peers):
        for prober in (http("/ok", http_port), Prober(action=GRPCAction(port=grpc_port))):
            result = await run_probe(prober, default_host="127.0.0.1", source_address="127.0.0.6")
            assert result.ok, result.detail
    assert [remote for _, _, remote in seen.requests] == ["127.0.0.6"]
    assert [peer.rsplit(":", 1)[0] for peer in peers] == ["ipv4:127.0.0.6"]


# -- TCP ----------------------------------------------------------------------------------------


async def test_tcp_probe_passes_when_the_port_accepts() -> None:
    accepted: list[str] = []

    async def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("peername")[0])
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await run_probe(Prober(action=TCPSocketAction(port=port)), default_host="127.0.0.1")
    finally:
        server.close()
        await server.wait_closed()
    assert result.ok, result.detail


async def test_tcp_probe_fails_when_the_port_is_closed(refused_port: int) -> None:
    result = await run_probe(Prober(action=TCPSocketAction(port=refused_port)), default_host="127.0.0.1")
    assert not result.ok
    assert "refused" in result.detail.lower()


# -- gRPC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "ok", "words"),
    [
        ("", True, "SERVING"),
        ("ready", True, "SERVING"),
        ("down", False, "NOT_SERVING"),
        ("nobody", False, "does not know the service 'nobody'"),
    ],
)
async def test_grpc_probe_reports_the_health_status(service: str, ok: bool, words: str) -> None:
    async with grpc_server({"": 1, "ready": 1, "down": 2}) as (port, peers):
        result = await run_probe(Prober(action=GRPCAction(port=port, service=service)), default_host="127.0.0.1")
    assert result.ok is ok, result.detail
    assert words in result.detail
    assert len(peers) == 1


async def test_grpc_probe_fails_when_the_server_has_no_health_service() -> None:
    async with grpc_server(None) as (port, _):
        result = await run_probe(Prober(action=GRPCAction(port=port)), default_host="127.0.0.1")
    assert not result.ok
    assert "does not implement grpc.health.v1.Health" in result.detail


async def test_grpc_probe_fails_when_the_server_is_unreachable(refused_port: int) -> None:
    result = await run_probe(Prober(action=GRPCAction(port=refused_port)), default_host="127.0.0.1")
    assert not result.ok
    assert "refused" in result.detail.lower()


def test_health_messages_match_the_protobuf_library() -> None:
    for service in ("", "ready", "x" * 300):
        assert HealthCheckRequest.FromString(encode_health_request(service)).service == service
    for status in range(4):
        assert decode_health_status(HealthCheckResponse(status=status).SerializeToString()) == status
    # unknown fields of every wire type are skipped
    assert decode_health_status(b"\x10\x05" + b"\x1a\x02hi" + b"\x25\0\0\0\0" + b"\x29" + b"\0" * 8 + b"\x08\x02") == 2
    with pytest.raises(ValueError, match="truncated"):
        decode_health_status(b"\x08")


# -- parsing ISTIO_KUBE_APP_PROBERS -------------------------------------------------------------


def _golden_probers() -> list[str]:
    """Every ISTIO_KUBE_APP_PROBERS value in the injector's golden outputs."""
    values: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") == "ISTIO_KUBE_APP_PROBERS" and isinstance(node.get("value"), str):
                values.append(node["value"])
            for item in node.values():
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in sorted(GOLDENS.glob("*.injected")):
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue  # the golden of a refused pod is an error message
        walk(documents)
    return values


def test_every_probers_value_the_injector_writes_parses() -> None:
    values = _golden_probers()
    assert len(values) >= 5
    for value in values:
        probers = parse_probers(value)
        assert probers and all(path.startswith(("/app-health/", "/app-lifecycle/")) for path in probers)
    web_probers = parse_probers(next(v for v in values if "/app-health/web/" in v))
    assert web_probers["/app-health/web/readyz"] == Prober(
        action=HTTPGetAction(port=8080, path="/ready", headers=(("X-Probe", "readiness"),)), timeout=2.0
    )
    assert web_probers["/app-health/web/livez"].action == HTTPGetAction(
        port=8443, path="/healthz", scheme="HTTPS", host="127.0.0.1"
    )


def test_empty_probers_mean_none() -> None:
    assert parse_probers("") == {}
    assert parse_probers("{}") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[]", "must be a JSON object"),
        ('{"/healthz/ready": {"tcpSocket": {"port": 1}}}', '["/healthz/ready"]: the key must look like'),
        ('{"/app-health/web/readyz": {}}', "exactly one of httpGet, tcpSocket, grpc (found: none)"),
        (
            '{"/app-health/web/readyz": {"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}}',
            "found: httpGet, tcpSocket",
        ),
        ('{"/app-health/web/readyz": {"httpGet": {"port": "http"}}}', "httpGet.port: must be a port number"),
        ('{"/app-health/web/readyz": {"tcpSocket": {"port": 70000}}}', "tcpSocket.port: must be a port number"),
        ('{"/app-health/web/readyz": {"httpGet": {"port": 80, "scheme": "ftp"}}}', "httpGet.scheme: must be HTTP"),
        ('{"/app-health/web/readyz": {"httpGet": {"port": 80, "httpHeaders": [{"value": "x"}]}}}', "httpHeaders[0]"),
        (
            '{"/app-health/web/readyz": {"grpc": {"port": 80}, "timeoutSeconds": 0}}',
            "timeoutSeconds: must be a positive number",
        ),
        ('{"/app-health/web/livez": "tcp"}', '["/app-health/web/livez"]: must be an object'),
    ],
)
def test_bad_probers_are_refused_naming_the_entry(text: str, message: str) -> None:
    with pytest.raises(ProbersError) as info:
        parse_probers(text)
    assert "ISTIO_KUBE_APP_PROBERS" in str(info.value)
    assert message in str(info.value)


def test_a_named_port_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="named ports must be resolved to numbers by the injector"):
        parse_probers('{"/app-health/web/readyz": {"httpGet": {"port": "http", "path": "/"}}}')
