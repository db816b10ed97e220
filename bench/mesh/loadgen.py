"""Both ends of the measured traffic, each its own process: the load generator and the app it calls.

    python -m bench.mesh.loadgen load --target HOST:PORT [--host NAME] [--connections 8] [--seconds 10]
                                      [--watch NAME=PID ...]
    python -m bench.mesh.loadgen serve --listen HOST:PORT

`load` keeps `--connections` HTTP/1.1 keep-alive connections busy, one request in flight on each (a
GET of `/`; the next one is sent as soon as the answer is complete), first for `--warmup` seconds
that are not counted, then for `--seconds` that are. It records the latency of every request that
started and ended inside the measured window and prints one JSON object on stdout: `requests`,
`window_s`, `rps`, `p50_ms`, `p90_ms`, `p99_ms`, `max_ms`, `error_count`, up to five distinct
`errors`, and `cpu_percent`: the CPU (% of one core) over the window of itself (`load generator`) and
of every `--watch NAME=PID` process. An answer other than 200, a connection that closes or cannot be
made, and a request still unanswered `--timeout` seconds after the window are errors; a lost
connection is made again.

`serve` is the app: an asyncio HTTP/1.1 server (a bare protocol, no framework) answering every
request with the same 200 and a 16-byte body, keeping connections open unless asked to close, so
that on this machine it is as cheap as a Python server gets. It stops on SIGTERM or SIGINT.

Raw asyncio protocols on both ends: per request they cost a fraction of what aiohttp or
http.client in threads cost, so the load generator and the app stay off the critical path as far
as Python allows.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import pathlib
import signal
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.common import percentile

BODY = b'{"app":"bench"}\n'
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
MAX_HEAD = 64 * 1024
TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
MAX_ERROR_KINDS = 5
RECONNECT_DELAY = 0.1
CLK_TCK = os.sysconf("SC_CLK_TCK")
SELF = "load generator"
Reading = tuple[float, dict[str, float]]  # (wall clock, CPU seconds by process name)


def host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` for argparse; a precise message otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (like 127.0.0.1:9080)")
    return host, int(port)


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of at least 1")
    return int(text)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far. Raises OSError when it is gone."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def name_pid(text: str) -> tuple[str, int]:
    """`NAME=PID` for argparse."""
    name, sep, pid = text.rpartition("=")
    if not sep or not name or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PID (like 'app=1234')")
    return name, int(pid)


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a message head (lower-cased bytes), None when it has none or an unusable one."""
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        return None
    start += len(b"\r\ncontent-length:")
    end = head.find(b"\r\n", start)
    value = head[start : end if end >= 0 else len(head)].strip()
    return int(value) if value.isdigit() else None


# -- the app ---------------------------------------------------------------------------------------


class _AppConnection(asyncio.Protocol):
    """One client connection of the app: answers each complete request (pipelined ones in order)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).lower()
            total = end + 4 + (_content_length(head) or 0)
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            self.transport.write(ANSWER)
            if b"\r\nconnection: close" in head:
                self.transport.close()
                return
        if len(self.buffer) > MAX_HEAD:
            self.transport.write(TOO_LARGE)
            self.transport.close()


async def serve(listen: tuple[str, int]) -> None:
    """Serve until SIGTERM/SIGINT. OSError (address in use, not configured) propagates."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(_AppConnection, listen[0], listen[1], reuse_address=True, backlog=1024)
    async with server:
        await stop.wait()


# -- the load generator ----------------------------------------------------------------------------


@dataclass(kw_only=True)
class _Run:
    """The shared state of one run: the window, every latency in it, and the errors."""

    measure_from: float
    measure_until: float
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0

    def sending(self) -> bool:
        return time.perf_counter() < self.measure_until

    def error(self, message: str) -> None:
        if message in self.errors or len(self.errors) < MAX_ERROR_KINDS:
            self.errors[message] += 1
        else:
            self.errors["(other errors)"] += 1


class _LoadConnection(asyncio.Protocol):
    """One keep-alive connection with one request in flight; `closed` resolves when the connection ends."""

    def __init__(self, run: _Run, request: bytes, closed: asyncio.Future[None]) -> None:
        self.run = run
        self.request = request
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.started: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if not self.run.sending():
            self.transport.close()
            return
        self.run.in_flight += 1
        self.started = time.perf_counter()
        self.transport.write(self.request)

    def _fail(self, message: str) -> None:
        assert self.transport is not None
        self.run.error(message)
        self._answered()
        self.transport.close()

    def _answered(self) -> None:
        if self.started is not None:
            self.run.in_flight -= 1
            self.started = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._fail(f"answer head longer than {MAX_HEAD} bytes")
            return
        head = bytes(self.buffer[:end]).lower()
        length = _content_length(head)
        if length is None:
            self._fail(f"answer without a usable content-length: {head[:80]!r}")
            return
        if len(self.buffer) < end + 4 + length:
            return
        finished = time.perf_counter()
        started = self.started
        status = head[9:12].decode(errors="replace")
        body = bytes(self.buffer[end + 4 : end + 4 + min(length, 80)])
        del self.buffer[: end + 4 + length]
        if status != "200":
            self._fail(f"HTTP {status}: {body!r}")
            return
        self._answered()
        if started is not None and started >= self.run.measure_from and finished <= self.run.measure_until:
            self.run.latencies.append(finished - started)
        if b"\r\nconnection: close" in head:
            assert self.transport is not None
            self.transport.close()
            return
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.started is not None:
            self.run.error(f"connection closed before the answer ({exc or 'by the peer'})")
            self._answered()
        if not self.closed.done():
            self.closed.set_result(None)


async def _connection_slot(run: _Run, target: tuple[str, int], request: bytes) -> None:
    """Keep one connection going until the window ends, making it again when it is lost."""
    loop = asyncio.get_running_loop()
    while run.sending():
        closed: asyncio.Future[None] = loop.create_future()
        try:
            await loop.create_connection(functools.partial(_LoadConnection, run, request, closed), *target)
        except OSError as exc:
            run.error(f"cannot connect to {target[0]}:{target[1]}: {exc.strerror or exc}")
            await asyncio.sleep(RECONNECT_DELAY)
            continue
        await closed


def _cpu_now(watch: Mapping[str, int]) -> Reading:
    """(wall clock, CPU seconds of this process and of each watched one); a process that is gone reads NaN."""
    out = {SELF: time.process_time()}
    for name, pid in watch.items():
        try:
            out[name] = cpu_seconds(pid)
        except OSError:
            out[name] = float("nan")
    return time.perf_counter(), out


async def _sample_window(run: _Run, watch: Mapping[str, int]) -> tuple[Reading, Reading]:
    """CPU readings at the start and at the end of the measured window."""
    await asyncio.sleep(max(run.measure_from - time.perf_counter(), 0))
    first = _cpu_now(watch)
    await asyncio.sleep(max(run.measure_until - time.perf_counter(), 0))
    return first, _cpu_now(watch)


async def load(
    *,
    target: tuple[str, int],
    host: str,
    connections: int,
    seconds: float,
    warmup: float,
    late_after: float,
    watch: Mapping[str, int],
) -> dict[str, object]:
    """Run the load and return the result object described in the module docstring (never raises for the
    peer's misbehaviour: that is counted as errors)."""
    request = f"GET / HTTP/1.1\r\nhost: {host}\r\nuser-agent: meshplane-bench\r\n\r\n".encode()
    now = time.perf_counter()
    run = _Run(measure_from=now + warmup, measure_until=now + warmup + seconds)
    sampler = asyncio.ensure_future(_sample_window(run, watch))
    slots = [asyncio.ensure_future(_connection_slot(run, target, request)) for _ in range(connections)]
    _, pending = await asyncio.wait(slots, timeout=warmup + seconds + late_after)
    if pending:
        for _ in range(run.in_flight):
            run.error(f"no answer within {late_after:g}s after the window")
        for slot in pending:
            slot.cancel()
        await asyncio.wait(pending)
    (start, before), (end, after) = await sampler
    lat = run.latencies
    return {
        "requests": len(lat),
        "window_s": seconds,
        "rps": len(lat) / seconds,
        "p50_ms": percentile(lat, 50) * 1000,
        "p90_ms": percentile(lat, 90) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": max(lat, default=float("nan")) * 1000,
        "error_count": sum(run.errors.values()),
        "errors": dict(run.errors),
        "cpu_percent": {name: (after[name] - before[name]) / (end - start) * 100 for name in before},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mesh.loadgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the app")
    s.add_argument("--listen", required=True, type=host_port, help="HOST:PORT to serve on")
    g = sub.add_parser("load", help="run the load and print the result as JSON")
    g.add_argument("--target", required=True, type=host_port, help="HOST:PORT to connect to")
    g.add_argument("--host", help="Host header (default: the target)")
    g.add_argument("--connections", type=positive_int, default=8, help="concurrent keep-alive connections")
    g.add_argument("--seconds", type=positive, default=10.0, help="measured seconds")
    g.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the measured window")
    g.add_argument("--timeout", type=positive, default=10.0, help="seconds an answer may be late after the window")
    g.add_argument(
        "--watch", type=name_pid, action="append", default=[], help="NAME=PID: report this process's CPU too"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        try:
            asyncio.run(serve(args.listen))
        except OSError as exc:
            print(f"cannot serve on {args.listen[0]}:{args.listen[1]}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        return 0
    if args.warmup < 0:
        print("--warmup must be 0 or more seconds", file=sys.stderr)
        return 2
    host = args.host or f"{args.target[0]}:{args.target[1]}"
    result = asyncio.run(
        load(
            target=args.target,
            host=host,
            connections=args.connections,
            seconds=args.seconds,
            warmup=args.warmup,
            late_after=args.timeout,
            watch=dict(args.watch),
        )
    )
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
