"""Load generators for bench/soak, one mode per process, each running for `--seconds`.

- `probe`: polls `http://<http-addr>/ready` every `--interval` seconds (the next poll starts one
  interval after the previous one started, at once when that one took longer) on a keep-alive
  connection, and records every wait: the time from sending the request to the end of the answer.
- `control`: a bare aiohttp `/ready` in its own process, polled by a second `probe`: the waits the
  machine alone causes, measured in the same run.
- `webhook`: AdmissionReview POSTs over verified HTTPS at `--rate` per second, and `--slow` slow
  clients at the same time, each in a loop: a new TLS connection that sends its request headers a
  few bytes at a time over `--slow-headers` seconds, then half of the body, holds the rest for
  `--slow-body` seconds, then sends it. Both times stay below the webhook's documented header and
  body timeouts (10 s each by default, `webhook.limits.Limits`), so every answer must be 200.
- `ca`: CSRs over gRPC+TLS to the CA at `--rate` per second over `--channels` connections, each
  request with the bearer token from `--token`; every answer must carry a certificate chain.

Each prints one JSON object: requests and errors (by kind), with a few examples, and for the probe
every wait (seconds) with its wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import pathlib
import socket
import ssl
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from protos.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc

SERVER_NAME = "istiod.istio-system.svc"  # a DNS SAN of the serving certificate


class Tally:
    """Requests and errors by kind, with the first few error texts."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []

    def error(self, kind: str, text: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {text[:300]}")

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"requests": dict(self.requests), "errors": dict(self.errors), "examples": self.examples, **extra}


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Poll /ready for `args.seconds`; every wait with its wall time, and the failures."""
    host, _, port = args.http_addr.rpartition(":")
    tally = Tally()
    waits: list[tuple[float, float]] = []
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    deadline = time.monotonic() + args.seconds
    while (started := time.monotonic()) < deadline:
        wall = time.time()
        tally.requests["ready_poll"] += 1
        try:
            conn.request("GET", "/ready")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                tally.error("ready_poll", f"HTTP {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            tally.error("ready_poll", repr(exc))
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
        waits.append((wall, time.monotonic() - started))
        time.sleep(max(0.0, started + args.interval - time.monotonic()))
    conn.close()
    return tally.result(waits=waits)


def control(args: argparse.Namespace) -> None:
    """Serve a bare aiohttp `/ready` on 127.0.0.1 (port printed as JSON), for `args.seconds` plus a margin.

    Polled by a second probe in the same run, it measures what the machine alone does to a `/ready` wait."""

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ready\n")

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/ready", ready)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
        await asyncio.sleep(args.seconds + 120)
        await runner.cleanup()

    asyncio.run(serve())


async def _paced(rate: float, deadline: float, send: Any) -> None:
    """Call `send()` `rate` times a second until the deadline, as tasks (a slow answer does not slow the pace)."""
    tasks: set[asyncio.Task[None]] = set()
    step = 1.0 / rate
    next_at = time.monotonic()
    while next_at < deadline:
        task = asyncio.create_task(send())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += step
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*tasks)


async def _slow_client(args: argparse.Namespace, ctx: ssl.SSLContext, body: bytes, tally: Tally) -> None:
    """One slow admission request on its own connection, within the documented timeouts."""
    host, _, port = args.webhook_addr.rpartition(":")
    head = (
        f"POST /inject HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    tally.requests["webhook_slow"] += 1
    try:
        reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=SERVER_NAME)
        try:
            pieces = 10
            for n in range(pieces):
                writer.write(head[n * len(head) // pieces : (n + 1) * len(head) // pieces])
                await writer.drain()
                await asyncio.sleep(args.slow_headers / pieces)
            writer.write(body[: len(body) // 2])
            await writer.drain()
            await asyncio.sleep(args.slow_body)
            writer.write(body[len(body) // 2 :])
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 60)
            await asyncio.wait_for(reader.read(), 60)
        finally:
            writer.close()
    except (OSError, TimeoutError) as exc:
        tally.error("webhook_slow", repr(exc))
        return
    if not status_line.startswith(b"HTTP/1.1 200"):
        tally.error("webhook_slow", status_line.decode(errors="replace").strip() or "no answer")


async def webhook(args: argparse.Namespace) -> dict[str, Any]:
    """Paced fast admissions and looping slow clients for `args.seconds`."""
    tally = Tally()
    ctx = ssl.create_default_context(cafile=args.root)
    body = args.body_bytes
    deadline = time.monotonic() + args.seconds
    url = f"https://{args.webhook_addr}/inject"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=16)) as session:

        async def fast() -> None:
            tally.requests["webhook"] += 1
            try:
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}, server_hostname=SERVER_NAME
                ) as resp:
                    payload = await resp.read()
                    if resp.status != 200 or json.loads(payload).get("response", {}).get("allowed") is not True:
                        tally.error("webhook", f"HTTP {resp.status}: {payload[:200]!r}")
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                tally.error("webhook", repr(exc))

        async def slow_loop(delay: float) -> None:
            await asyncio.sleep(delay)
            while time.monotonic() + args.slow_headers + args.slow_body + 5 < deadline:
                await _slow_client(args, ctx, body, tally)

        slow = [slow_loop(n * (args.slow_headers + args.slow_body) / max(1, args.slow)) for n in range(args.slow)]
        await asyncio.gather(_paced(args.rate, deadline, fast), *slow)
    return tally.result()


async def ca(args: argparse.Namespace) -> dict[str, Any]:
    """Paced CSRs for `args.seconds`."""
    tally = Tally()
    root = args.root_bytes
    requests = [ca_pb2.IstioCertificateRequest(csr=c) for c in args.csr_list]
    metadata = (("authorization", f"Bearer {args.token_text}"),)
    options = [("grpc.ssl_target_name_override", SERVER_NAME), ("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.secure_channel(args.ca_addr, grpc.ssl_channel_credentials(root), options=options)
        for _ in range(args.channels)
    ]
    stubs = [ca_pb2_grpc.IstioCertificateServiceStub(c) for c in channels]
    sent = [0]

    async def sign() -> None:
        index = sent[0]
        sent[0] += 1
        tally.requests["csr"] += 1
        try:
            response = await stubs[index % len(stubs)].CreateCertificate(
                requests[index % len(requests)], metadata=metadata, timeout=60
            )
        except grpc.aio.AioRpcError as exc:
            tally.error("csr", f"{exc.code().name}: {exc.details()}")
            return
        if len(response.cert_chain) < 2:
            tally.error("csr", f"short chain: {len(response.cert_chain)}")

    await _paced(args.rate, time.monotonic() + args.seconds, sign)
    for channel in channels:
        await channel.close()
    return tally.result()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["probe", "control", "webhook", "ca"])
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--http-addr", help="probe: host:port of /ready")
    p.add_argument("--interval", type=float, default=0.05, help="probe: seconds between polls")
    p.add_argument("--webhook-addr", help="webhook: host:port")
    p.add_argument("--body", help="webhook: file with the AdmissionReview JSON")
    p.add_argument("--slow", type=int, default=20, help="webhook: concurrent slow clients")
    p.add_argument("--slow-headers", type=float, default=3.0, help="webhook: seconds a slow client takes for headers")
    p.add_argument("--slow-body", type=float, default=3.0, help="webhook: seconds a slow client holds half the body")
    p.add_argument("--ca-addr", help="ca: host:port of the secure gRPC port")
    p.add_argument("--csrs", help="ca: JSON file, a list of PEM CSRs")
    p.add_argument("--token", help="ca: file with the bearer token")
    p.add_argument("--channels", type=int, default=4, help="ca: TLS connections")
    p.add_argument("--root", help="webhook, ca: PEM file of the mesh root")
    p.add_argument("--rate", type=float, default=10.0, help="webhook, ca: requests per second")
    a = p.parse_args()
    if a.mode == "control":
        control(a)
        return
    if a.mode == "probe":
        result = probe(a)
    elif a.mode == "webhook":
        a.body_bytes = pathlib.Path(a.body).read_bytes()
        result = asyncio.run(webhook(a))
    else:
        a.token_text = pathlib.Path(a.token).read_text().strip()
        a.root_bytes = pathlib.Path(a.root).read_bytes()
        a.csr_list = json.loads(pathlib.Path(a.csrs).read_text())
        result = asyncio.run(ca(a))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
