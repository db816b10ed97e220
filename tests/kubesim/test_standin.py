"""The stand-in app, run as the kubelet runs it: a child process, spoken to over real HTTP and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc
import pytest
from grpc import aio

ROOT = pathlib.Path(__file__).resolve().parents[2]
ANNOUNCE = re.compile(r"^(?P<name>\S+): serving (?P<proto>http|grpc) on 0\.0\.0\.0:(?P<port>\d+)$")


@dataclass
class App:
    proc: asyncio.subprocess.Process
    ports: dict[str, list[int]]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.ports['http'][0]}"


@contextlib.asynccontextmanager
async def standin(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[App]:
    """The app as a child process, once it announced every port (port 0 picks a free one)."""
    base = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "HOSTNAME")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.kubesim.standin", *args,
        stderr=asyncio.subprocess.PIPE, env={**base, **(env or {})}, cwd=ROOT,
    )  # fmt: skip
    try:
        wanted = sum(1 for a in args if a in ("--http", "--grpc"))
        ports: dict[str, list[int]] = {"http": [], "grpc": []}
        assert proc.stderr is not None
        for _ in range(wanted):
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode().strip()
            match = ANNOUNCE.match(line)
            assert match, f"unexpected stderr line {line!r}"
            ports[match["proto"]].append(int(match["port"]))
        yield App(proc, ports)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_every_path_and_method_answers_200_with_the_request_echoed() -> None:
    async with (
        standin("--http", "0", "--name", "web", env={"POD_NAME": "web-1"}) as app,
        aiohttp.ClientSession() as session,
    ):
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            async with session.request(
                method, f"{app.http}/any/path?x=1", headers={"X-Forwarded-Client-Cert": "By=spiffe://a"}, data=b"hi"
            ) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["method"] == method
            assert body["path"] == "/any/path?x=1"
            assert body["host"] == f"127.0.0.1:{app.ports['http'][0]}"
            assert body["headers"]["x-forwarded-client-cert"] == "By=spiffe://a"
            assert (body["pod"], body["name"], body["port"]) == ("web-1", "web", app.ports["http"][0])


async def test_status_path_answers_that_code_and_delay_waits() -> None:
    async with standin("--http", "0", "--http", "0") as app, aiohttp.ClientSession() as session:
        second = f"http://127.0.0.1:{app.ports['http'][1]}"
        for code in (201, 404, 503):
            async with session.get(f"{second}/status/{code}") as resp:
                assert resp.status == code
                assert (await resp.json())["port"] == app.ports["http"][1]
        async with session.get(f"{app.http}/status/204") as resp:
            assert resp.status == 204
            assert await resp.read() == b""
        async with session.get(f"{app.http}/status/999") as resp:
            assert resp.status == 400
            assert "outside 100-599" in (await resp.json())["error"]
        async with session.get(f"{app.http}/delay/50") as resp:
            assert resp.status == 200


async def test_keep_alive_chunked_bodies_and_bad_requests_over_a_raw_socket() -> None:
    async with standin("--http", "0") as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.ports["http"][0])
        try:
            writer.write(
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                b"GET /b HTTP/1.1\r\nHost: y\r\n\r\n"
            )
            for path in ("/a", "/b"):
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                assert head.startswith("HTTP/1.1 200 OK")
                content_length = re.search(r"Content-Length: (\d+)", head)
                assert content_length is not None
                length = int(content_length[1])
                assert json.loads(await reader.readexactly(length))["path"] == path
            writer.write(b"NONSENSE\r\n\r\n")
            answer = await reader.read()
            assert answer.startswith(b"HTTP/1.1 400 Bad Request")
            assert b"not an HTTP/1.x request line" in answer
        finally:
            writer.close()


async def test_grpc_health_is_serving_and_echo_returns_the_request() -> None:
    async with (
        standin("--grpc", "0", env={"HOSTNAME": "grpc-pod"}) as app,
        aio.insecure_channel(f"127.0.0.1:{app.ports['grpc'][0]}") as channel,
    ):
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
        assert await check(b"") == b"\x08\x01"  # status: SERVING
        assert await check(b"\x0a\x0ckubesim.Echo") == b"\x08\x01"
        with pytest.raises(aio.AioRpcError) as err:
            await check(b"\x0a\x07missing")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        call = channel.unary_unary("/kubesim.Echo/Echo", request_serializer=None, response_deserializer=None)(
            b"ping", metadata=(("x-forwarded-client-cert", "By=z"),)
        )
        assert await call == b"ping"
        trailers = dict(await call.trailing_metadata())
        assert trailers["pod"] == "grpc-pod"
        assert trailers["x-forwarded-client-cert"] == "By=z"


async def test_sigterm_finishes_in_flight_requests_then_exits_0() -> None:
    async with standin("--http", "0", "--grpc", "0") as app, aiohttp.ClientSession() as session:
        async with aio.insecure_channel(f"127.0.0.1:{app.ports['grpc'][0]}") as channel:
            watch = channel.unary_stream(
                "/grpc.health.v1.Health/Watch", request_serializer=None, response_deserializer=None
            )(b"")
            assert await watch.read() == b"\x08\x01"
            in_flight = asyncio.ensure_future(session.get(f"{app.http}/delay/300"))
            await asyncio.sleep(0.1)  # let the request reach the app before the signal
            app.proc.send_signal(signal.SIGTERM)
            resp = await in_flight
            assert resp.status == 200
            assert resp.headers["Connection"] == "close"
            resp.release()
            assert await watch.read() == b"\x08\x02"  # NOT_SERVING while shutting down
            assert await asyncio.wait_for(app.proc.wait(), 5) == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{app.http}/")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give at least one --http PORT or --grpc PORT"),
        (("--http", "web"), "argument --http: invalid port 'web'"),
        (("--grpc", "70000"), "argument --grpc: invalid port '70000'"),
        (("--http", "8080", "--grpc", "8080"), "port 8080 is given more than once"),
        (("--http", "80", "--color"), "unrecognized arguments: --color"),
    ],
)
async def test_invalid_flags_exit_2_with_a_message(args: tuple[str, ...], message: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.kubesim.standin", *args, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert message in err.decode()
    assert "Traceback" not in err.decode()


async def test_a_port_in_use_is_a_one_line_error() -> None:
    async with standin("--http", "0") as app:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.kubesim.standin", "--http", str(app.ports["http"][0]),
            stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode == 1
        assert "cannot listen" in err.decode()
        assert "Traceback" not in err.decode()
