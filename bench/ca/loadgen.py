"""Load generator for the CA: sends pre-generated CSRs over gRPC+TLS and records each latency.

Runs as its own process (`python -m bench.ca.loadgen ...`) and prints one JSON object, so the
client never shares a core with the server. Two modes:
- `rate`: `--concurrency` requests in flight over `--channels` connections for `--seconds`;
- `burst`: `--clients` clients, each with its own connection (opened before the clock starts),
  send `--total` CSRs between them as fast as answers come; the time is first send to last answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc

from protos.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc


def _channel(target: str, root: bytes, server_name: str) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        target,
        grpc.ssl_channel_credentials(root),
        # Distinct channel args keep gRPC from sharing one subchannel (connection) between clients.
        options=[("grpc.ssl_target_name_override", server_name), ("grpc.use_local_subchannel_pool", 1)],
    )


async def _send(
    stub: ca_pb2_grpc.IstioCertificateServiceStub,
    requests: list[ca_pb2.IstioCertificateRequest],
    metadata: list[tuple[str, str]],
    lat: list[float],
    errors: list[str],
    *,
    deadline: float | None = None,
    count: int | None = None,
    next_index: list[int],
) -> None:
    sent = 0
    while (deadline is None or time.perf_counter() < deadline) and (count is None or sent < count):
        request = requests[next_index[0] % len(requests)]
        next_index[0] += 1
        sent += 1
        start = time.perf_counter()
        try:
            response = await stub.CreateCertificate(request, metadata=metadata, timeout=60)
        except grpc.aio.AioRpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")
            continue
        if len(response.cert_chain) < 2:
            errors.append(f"short chain: {len(response.cert_chain)}")
            continue
        lat.append(time.perf_counter() - start)


async def rate(
    a: argparse.Namespace, requests: list[ca_pb2.IstioCertificateRequest], meta: list[tuple[str, str]]
) -> dict[str, Any]:
    channels = [_channel(a.target, a.root, a.server_name) for _ in range(a.channels)]
    stubs = [ca_pb2_grpc.IstioCertificateServiceStub(c) for c in channels]
    index = [0]
    warm_deadline = time.perf_counter() + a.warmup
    await asyncio.gather(
        *(
            _send(stubs[i % len(stubs)], requests, meta, [], [], deadline=warm_deadline, next_index=index)
            for i in range(a.concurrency)
        )
    )
    lat: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    deadline = started + a.seconds
    await asyncio.gather(
        *(
            _send(stubs[i % len(stubs)], requests, meta, lat, errors, deadline=deadline, next_index=index)
            for i in range(a.concurrency)
        )
    )
    elapsed = time.perf_counter() - started
    for c in channels:
        await c.close()
    return {"latencies": lat, "elapsed": elapsed, "errors": errors[:5], "error_count": len(errors)}


async def burst(
    a: argparse.Namespace, requests: list[ca_pb2.IstioCertificateRequest], meta: list[tuple[str, str]]
) -> dict[str, Any]:
    connect_start = time.perf_counter()
    channels = [_channel(a.target, a.root, a.server_name) for _ in range(a.clients)]
    await asyncio.gather(*(asyncio.wait_for(c.channel_ready(), 60) for c in channels))
    connect = time.perf_counter() - connect_start
    stubs = [ca_pb2_grpc.IstioCertificateServiceStub(c) for c in channels]
    per_client = [a.total // a.clients + (1 if i < a.total % a.clients else 0) for i in range(a.clients)]
    lat: list[float] = []
    errors: list[str] = []
    index = [0]
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _send(stub, requests, meta, lat, errors, count=n, next_index=index)
            for stub, n in zip(stubs, per_client, strict=True)
        )
    )
    elapsed = time.perf_counter() - started
    for c in channels:
        await c.close()
    return {
        "latencies": lat,
        "elapsed": elapsed,
        "connect_s": connect,
        "errors": errors[:5],
        "error_count": len(errors),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["rate", "burst"])
    p.add_argument("--target", required=True)
    p.add_argument("--root", required=True, help="PEM file of the mesh root")
    p.add_argument("--server-name", required=True)
    p.add_argument("--csrs", required=True, help="JSON file: list of PEM CSRs")
    p.add_argument("--token", required=True, help="file with the bearer token")
    p.add_argument("--ttl", type=int, default=0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--total", type=int, default=2000)
    a = p.parse_args()
    with open(a.root, "rb") as f:
        a.root = f.read()
    with open(a.csrs) as f:
        requests = [ca_pb2.IstioCertificateRequest(csr=c, validity_duration=a.ttl) for c in json.load(f)]
    with open(a.token) as f:
        meta = [("authorization", f"Bearer {f.read().strip()}")]
    result = asyncio.run((rate if a.mode == "rate" else burst)(a, requests, meta))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
