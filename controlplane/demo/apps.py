"""The demo's tiny applications: `python -m controlplane.demo.apps ROLE ...`.

- `reviews`: HTTP server; every answer is JSON with its workload, its version and the
  `x-forwarded-client-cert` header it received (its sidecar's proof of who called).
- `frontend`: HTTP server (so it is a real backend too) that sends `--rps` requests a second to
  `--target` (its sidecar's outbound listener) with Host `--host`, and counts each request's outcome,
  latency and answering version.
- `greeter`: gRPC server (method /meshplane.demo.Greeter/SayHello) answering with its workload and
  the XFCC metadata it received.
- `greeter-client`: proxyless gRPC client of `--target` (an `xds:///` name) with xDS credentials;
  the xDS bootstrap comes from GRPC_XDS_BOOTSTRAP.

Each app writes its counters to `--stats` (see controlplane.demo.stats) about twice a second and when
it exits. SIGTERM or SIGINT stops sending, waits briefly for requests in flight, writes the final
counters and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence

import aiohttp
import grpc
import grpc.experimental
from aiohttp import web

from controlplane.demo.stats import Counters, xfcc_uri
from controlplane.literals import decimal, natural

GREETER_METHOD = "/meshplane.demo.Greeter/SayHello"
REQUEST_TIMEOUT = 5.0  # seconds, per request
STATS_PERIOD = 0.5
MAX_IN_FLIGHT = 200
XFCC = "x-forwarded-client-cert"


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    port = natural(port_text) if sep else None
    if port is None or port > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    return host, port


def _positive(text: str) -> float:
    value = decimal(text.strip())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


class App:
    """Shared plumbing: counters, the periodic stats writer, and the stop signal."""

    def __init__(self, *, role: str, name: str, stats: pathlib.Path) -> None:
        self.counters = Counters(role=role, workload=name)
        self.stats_path = stats
        self.stopping = asyncio.Event()

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)

    def write_stats(self) -> None:
        self.counters.write(self.stats_path)

    async def write_stats_until_stopped(self) -> None:
        while not self.stopping.is_set():
            self.write_stats()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATS_PERIOD):
                    await self.stopping.wait()

    async def paced(self, rps: float, send: Callable[[], Coroutine[None, None, None]]) -> None:
        """Call `send()` `rps` times a second, each as a task, until stopped; then wait for those in flight."""
        period = 1.0 / rps
        tasks: set[asyncio.Task[None]] = set()
        next_at = time.monotonic()
        while not self.stopping.is_set():
            if len(tasks) >= MAX_IN_FLIGHT:
                self.counters.failure(f"more than {MAX_IN_FLIGHT} requests in flight")
            else:
                task = asyncio.create_task(send())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_at += period
            delay = next_at - time.monotonic()
            if delay < -1.0:  # fell behind (a stalled machine): do not burst to catch up
                next_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(delay, 0)):
                    await self.stopping.wait()
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 1)


# -- HTTP ------------------------------------------------------------------------------------------


async def _serve_http(app: App, listen: tuple[str, int], answer: dict[str, str]) -> web.AppRunner:
    async def handle(request: web.Request) -> web.Response:
        xfcc = request.headers.get(XFCC)
        app.counters.served_one(xfcc=xfcc)
        return web.json_response({**answer, "path": request.path, "xfcc": xfcc})

    server = web.Application()
    server.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, listen[0], listen[1], reuse_address=True).start()
    return runner


async def run_reviews(args: argparse.Namespace) -> None:
    app = App(role="reviews", name=args.name, stats=args.stats)
    app.install_signals()
    runner = await _serve_http(app, args.listen, {"workload": args.name, "version": args.version})
    try:
        await app.write_stats_until_stopped()
    finally:
        await runner.cleanup()
        app.write_stats()


async def run_frontend(args: argparse.Namespace) -> None:
    app = App(role="frontend", name=args.name, stats=args.stats)
    app.install_signals()
    runner = await _serve_http(app, args.listen, {"workload": args.name, "version": "v1"})
    url = f"http://{args.target[0]}:{args.target[1]}/reviews"
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)

    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)) as session:

        async def send() -> None:
            started = time.perf_counter()
            try:
                async with session.get(url, headers={"Host": args.host}) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        text = body.decode(errors="replace").strip()[:80]
                        app.counters.failure(f"HTTP {resp.status}: {text}" if text else f"HTTP {resp.status}")
                        return
                    data = json.loads(body)
                    version = str(data.get("version") or "?")
                    app.counters.success(
                        latency=time.perf_counter() - started, backend=version, peer=xfcc_uri(data.get("xfcc"))
                    )
            except TimeoutError:
                app.counters.failure(f"no answer within {REQUEST_TIMEOUT:g}s")
            except aiohttp.ClientConnectorError as exc:
                err = exc.os_error
                reason = os.strerror(err.errno).lower() if err.errno else str(err)
                app.counters.failure(f"cannot connect to {args.target[0]}:{args.target[1]}: {reason}")
            except (aiohttp.ClientError, ValueError) as exc:
                app.counters.failure(f"{type(exc).__name__}: {str(exc)[:80]}")

        writer = asyncio.create_task(app.write_stats_until_stopped())
        try:
            await app.paced(args.rps, send)
        finally:
            app.stopping.set()
            await writer
            await runner.cleanup()
            app.write_stats()


# -- gRPC ------------------------------------------------------------------------------------------


async def run_greeter(args: argparse.Namespace) -> None:
    app = App(role="greeter", name=args.name, stats=args.stats)
    app.install_signals()

    async def say_hello(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        xfcc = dict(context.invocation_metadata() or ()).get(XFCC)
        app.counters.served_one(xfcc=str(xfcc) if xfcc else None)
        return json.dumps({"workload": args.name, "hello": request.decode(errors="replace"), "xfcc": xfcc}).encode()

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # a second server on the port must fail
    handler = grpc.method_handlers_generic_handler(
        GREETER_METHOD.split("/")[1],
        {GREETER_METHOD.split("/")[2]: grpc.unary_unary_rpc_method_handler(say_hello)},
    )
    server.add_generic_rpc_handlers((handler,))
    address = f"{args.listen[0]}:{args.listen[1]}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound != args.listen[1]:
        raise OSError(f"cannot listen on {address} (in use?)")
    await server.start()
    try:
        await app.write_stats_until_stopped()
    finally:
        await server.stop(grace=1.0)
        app.write_stats()


async def run_greeter_client(args: argparse.Namespace) -> None:
    app = App(role="greeter-client", name=args.name, stats=args.stats)
    app.install_signals()
    # xDS decides the security; without any from xDS the channel falls back to plaintext.
    fallback = grpc.experimental.insecure_channel_credentials()  # type: ignore[no-untyped-call]
    credentials = grpc.xds_channel_credentials(fallback)
    async with grpc.aio.secure_channel(args.target, credentials) as channel:
        call = channel.unary_unary(GREETER_METHOD, request_serializer=None, response_deserializer=None)
        writer = asyncio.create_task(app.write_stats_until_stopped())
        # The xDS client needs a moment for its first configuration; calls before that would fail fast.
        waits = {asyncio.ensure_future(channel.channel_ready()), asyncio.ensure_future(app.stopping.wait())}
        await asyncio.wait(waits, timeout=args.ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()

        async def send() -> None:
            started = time.perf_counter()
            try:
                reply = await call(args.name.encode(), timeout=REQUEST_TIMEOUT)
                data = json.loads(reply)
                app.counters.success(
                    latency=time.perf_counter() - started,
                    backend=str(data.get("workload") or "?"),
                    peer=xfcc_uri(data.get("xfcc")),
                )
            except grpc.aio.AioRpcError as exc:
                app.counters.failure(f"{exc.code().name}: {(exc.details() or '')[:80]}")
            except ValueError as exc:
                app.counters.failure(f"bad reply: {exc}")

        try:
            await app.paced(args.rps, send)
        finally:
            app.stopping.set()
            await writer
            app.write_stats()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m controlplane.demo.apps", description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("reviews", "frontend", "greeter", "greeter-client"):
        p = sub.add_parser(role)
        p.add_argument("--name", required=True, help="the workload (pod) name")
        p.add_argument("--stats", required=True, type=pathlib.Path, help="file the counters are written to")
        if role != "greeter-client":
            p.add_argument("--listen", required=True, type=_host_port, help="host:port to serve on")
        if role == "reviews":
            p.add_argument("--version", required=True, help="the version to answer with")
        if role == "frontend":
            p.add_argument("--target", required=True, type=_host_port, help="the sidecar's outbound host:port")
            p.add_argument("--host", required=True, help="Host header naming the service to call")
        if role == "greeter-client":
            p.add_argument("--target", required=True, help="xds:///<service>:<port>")
            p.add_argument("--ready-timeout", type=_positive, default=30.0, help="seconds to wait for the channel")
        if role in ("frontend", "greeter-client"):
            p.add_argument("--rps", type=_positive, default=20.0, help="requests per second")
    return parser


RUNNERS = {
    "reviews": run_reviews,
    "frontend": run_frontend,
    "greeter": run_greeter,
    "greeter-client": run_greeter_client,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(RUNNERS[args.role](args))
    except OSError as exc:
        print(f"{args.role} {args.name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
