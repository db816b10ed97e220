"""WebhookSite: the connection cap holds over real TLS; connections beyond it are closed at once,
the admitted ones keep being served, and a freed slot admits a new connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from tests.helpers.injector import default_injector
from tests.helpers.serve import admission_review
from webhook.app import webhook_app
from webhook.limits import Limits
from webhook.listener import WebhookSite

CAP = 3
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}}


@dataclass
class Served:
    site: WebhookSite
    client: ssl.SSLContext


@pytest.fixture
def certificate(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed serving certificate for `localhost`: (key, cert)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


@contextlib.asynccontextmanager
async def serving(certificate: tuple[pathlib.Path, pathlib.Path], cap: int) -> AsyncIterator[Served]:
    key, cert = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    app = webhook_app(default_injector(), limits=Limits(header_timeout=30, body_timeout=30, max_connections=cap))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = WebhookSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
        await site.start()
        yield Served(site=site, client=ssl.create_default_context(cafile=str(cert)))
    finally:
        await runner.cleanup()


@pytest.fixture
async def served(certificate: tuple[pathlib.Path, pathlib.Path]) -> AsyncIterator[Served]:
    async with serving(certificate, CAP) as site:
        yield site


@pytest.fixture
async def roomy(certificate: tuple[pathlib.Path, pathlib.Path]) -> AsyncIterator[Served]:
    """A site whose cap holds a flood of connections."""
    async with serving(certificate, 1000) as site:
        yield site


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(served: Served) -> Connection:
    return await asyncio.open_connection("127.0.0.1", served.site.port, ssl=served.client, server_hostname="localhost")


async def inject(conn: Connection) -> int:
    """POST a pod on a kept-alive connection; the HTTP status."""
    reader, writer = conn
    body = admission_review(POD)
    writer.write(
        b"POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    answer = json.loads(await asyncio.wait_for(reader.readexactly(length), 30))
    assert answer["response"]["allowed"] is True
    return int(head.split(b" ")[1])


async def close(conn: Connection) -> None:
    conn[1].close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await conn[1].wait_closed()


async def test_connections_beyond_the_cap_are_closed_and_the_others_served(served: Served) -> None:
    held = [await connect(served) for _ in range(CAP)]
    try:
        for conn in held:
            assert await inject(conn) == 200
        with pytest.raises((ConnectionError, ssl.SSLError)):  # closed as it is accepted, before any handshake
            await connect(served)
        assert served.site.open_connections == CAP
        for conn in held:  # the admitted connections are not disturbed
            assert await inject(conn) == 200
        await close(held.pop())
        for _ in range(100):  # the freed slot is released when the server sees the close
            if served.site.open_connections < CAP:
                break
            await asyncio.sleep(0.05)
        held.append(await connect(served))
        assert await inject(held[-1]) == 200
    finally:
        for conn in held:
            await close(conn)


def client_hello() -> bytes:
    """A TLS client's first flight, the bytes that make the server do a handshake's costly half."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    with contextlib.suppress(ssl.SSLWantReadError):
        context.wrap_bio(ssl.MemoryBIO(), outgoing).do_handshake()
    return outgoing.read()


def hello_flood(port: int, count: int, sent: threading.Event) -> list[float]:
    """`count` connections from 127.0.0.1 that send their hello at once; when each got the server's answer."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        hello = client_hello()
        for sock in socks:
            sock.sendall(hello)
        sent.set()
        answered: list[float] = []
        waiting = set(socks)
        while waiting:
            readable, _, _ = select.select(list(waiting), [], [], 30)
            assert readable, f"{len(waiting)} hellos never answered"
            for sock in readable:
                sock.recv(65536)
                answered.append(time.monotonic())
                waiting.discard(sock)
        return answered
    finally:
        for sock in socks:
            sock.close()


async def test_a_flood_of_hellos_from_one_address_does_not_keep_another_waiting_behind_it(roomy: Served) -> None:
    """The server starts a few handshakes a turn of its event loop, taking client addresses in turn: a
    connection from another address is served after a few turns of the flood's, not after all 400 (which,
    started in one turn, held the event loop ~150 ms)."""
    sent = threading.Event()
    flood = asyncio.create_task(asyncio.to_thread(hello_flood, roomy.site.port, 400, sent))
    assert await asyncio.to_thread(sent.wait, 30)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", roomy.site.port, ssl=roomy.client, server_hostname="localhost", local_addr=("127.0.0.2", 0)
    )
    done = time.monotonic()
    await close((reader, writer))
    answered = await flood
    assert len(answered) == 400
    before = sum(1 for at in answered if at < done)
    assert before < 200, f"the other address's handshake finished after {before} of the flood's 400"


@pytest.mark.parametrize(("host", "client"), [("::1", "::1"), (None, "127.0.0.1"), (None, "::1")])
async def test_the_site_listens_where_it_is_told_ipv6_included(
    certificate: tuple[pathlib.Path, pathlib.Path], host: str | None, client: str
) -> None:
    key, cert = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    runner = web.AppRunner(webhook_app(default_injector(), limits=Limits(max_connections=CAP)), access_log=None)
    await runner.setup()
    try:
        site = WebhookSite(runner, host, 0, ssl_context=server_tls)
        await site.start()
        context = ssl.create_default_context(cafile=str(cert))
        conn = await asyncio.open_connection(client, site.port, ssl=context, server_hostname="localhost")
        assert await inject(conn) == 200
        await close(conn)
    finally:
        await runner.cleanup()
