"""Churning ADS proxies for bench/soak: many raw SotW gRPC clients in one process, for a fixed time.

Each proxy has its own channel (its own TCP connection, as every Envoy has) and runs sessions one
after another: a session opens an ADS stream, asks for CDS and LDS, subscribes EDS to a random part
of the clusters CDS named and RDS to route `80`, and ACKs what it receives. While the session lasts
it changes its subscriptions every `--churn` seconds on average (EDS names dropped and added, an
unknown route name subscribed and unsubscribed), NACKs a response with probability `--nack`, and
after a random lifetime around `--lifetime` seconds it closes the stream and opens the next one.
Resource names are read straight from the encoded bytes (field 1 of Cluster comes first).

Runs until `--seconds` have passed, then prints one JSON object: requests sent per kind (acks,
nacks, subscription changes, streams opened), responses per type, and errors (streams that ended
in an error the proxy did not cause), with a few examples.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from bench.xds.proxies import CHANNEL_OPTIONS, OWN_CONNECTION, _name
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE, SHORT

NAMESPACES = tuple(f"soak-{n}" for n in range(10))
UNKNOWN_ROUTE = "8443"  # a route name no Service gives: subscribed and dropped again by the churn


class Stats:
    """What all proxies of this process did; printed at the end."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []

    def error(self, kind: str, text: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {text[:300]}")


class ChurningProxy:
    """One simulated sidecar; `run(deadline)` runs sessions until the deadline."""

    def __init__(self, *, target: str, index: int, stats: Stats, args: argparse.Namespace) -> None:
        ns = NAMESPACES[index % len(NAMESPACES)]
        meta = struct_pb2.Struct()
        meta.update({"NAMESPACE": ns, "SERVICE_ACCOUNT": "soak", "ISTIO_VERSION": "1.40.0", "CLUSTER_ID": "Kubernetes"})
        ip = f"10.240.{index // 250}.{index % 250 + 1}"
        self.node = base_pb2.Node(id=f"sidecar~{ip}~soak-{index}.{ns}~{ns}.svc.cluster.local", metadata=meta)
        self.channel = grpc.aio.insecure_channel(target, options=[*CHANNEL_OPTIONS, OWN_CONNECTION])
        self.stats = stats
        self.args = args
        self.random = random.Random(index)

    async def run(self, deadline: float) -> None:
        while (remaining := deadline - time.monotonic()) > 0:
            lifetime = min(remaining, self.args.lifetime * self.random.uniform(0.5, 1.5))
            try:
                await self.session(lifetime)
            except grpc.aio.AioRpcError as exc:
                self.stats.error(f"ads_{exc.code().name}", exc.details() or "")
                await asyncio.sleep(1.0)  # as Envoy backs off before reconnecting
        await self.channel.close()

    async def session(self, lifetime: float) -> None:
        """One ADS stream for `lifetime` seconds; AioRpcError when it ends in an error we did not cause."""
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources()
        self.stats.requests["ads_stream"] += 1
        lock = asyncio.Lock()
        state: dict[str, Any] = {"clusters": [], "eds": frozenset(), "routes": ("80",), "nonces": {}}

        async def send(request: discovery_pb2.DiscoveryRequest, kind: str) -> None:
            async with lock:
                await call.write(request)
            self.stats.requests[kind] += 1

        async def subscribe(type_url: str, names: list[str], kind: str) -> None:
            nonce, version = state["nonces"].get(type_url, ("", ""))
            request = discovery_pb2.DiscoveryRequest(
                type_url=type_url, resource_names=names, response_nonce=nonce, version_info=version
            )
            await send(request, kind)

        async def churn() -> None:
            while True:
                await asyncio.sleep(self.args.churn * self.random.uniform(0.5, 1.5))
                clusters: list[str] = state["clusters"]
                if clusters and ENDPOINT in state["nonces"]:
                    keep = [n for n in state["eds"] if self.random.random() > 0.3]
                    add = self.random.sample(clusters, min(len(clusters), self.random.randint(1, 10)))
                    state["eds"] = frozenset(keep + add)
                    await subscribe(ENDPOINT, sorted(state["eds"]), "ads_eds_change")
                if ROUTE in state["nonces"]:
                    state["routes"] = ("80",) if len(state["routes"]) > 1 else ("80", UNKNOWN_ROUTE)
                    await subscribe(ROUTE, list(state["routes"]), "ads_rds_change")

        async def read() -> None:
            await send(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=self.node), "ads_initial")
            await send(discovery_pb2.DiscoveryRequest(type_url=LISTENER), "ads_initial")
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    self.stats.error("ads_eof", "the server ended the stream")
                    return
                type_url = response.type_url
                self.stats.responses[SHORT.get(type_url, "other")] += 1
                if self.random.random() < self.args.nack:
                    previous = state["nonces"].get(type_url, ("", ""))[1]
                    state["nonces"][type_url] = (response.nonce, previous)
                    error = status_pb2.Status(code=3, message=f"soak: rejected version {response.version_info}")
                    request = discovery_pb2.DiscoveryRequest(
                        type_url=type_url,
                        response_nonce=response.nonce,
                        version_info=previous,
                        resource_names=self._names_for(type_url, state),
                        error_detail=error,
                    )
                    await send(request, "ads_nack")
                    continue
                state["nonces"][type_url] = (response.nonce, response.version_info)
                await subscribe(type_url, self._names_for(type_url, state), "ads_ack")
                if type_url == CLUSTER:
                    names = [_name(r.value) for r in response.resources]
                    state["clusters"] = [n for n in names if n.startswith("outbound|")]
                    if not state["eds"]:
                        count = min(len(state["clusters"]), self.args.eds_names)
                        state["eds"] = frozenset(self.random.sample(state["clusters"], count))
                        await subscribe(ENDPOINT, sorted(state["eds"]), "ads_eds_change")
                elif type_url == LISTENER and ROUTE not in state["nonces"]:
                    state["nonces"][ROUTE] = ("", "")
                    await subscribe(ROUTE, list(state["routes"]), "ads_rds_change")

        tasks = [asyncio.create_task(read()), asyncio.create_task(churn())]
        try:
            done, _ = await asyncio.wait(tasks, timeout=lifetime, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raises a stream error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            call.cancel()
        self.stats.requests["ads_close"] += 1

    @staticmethod
    def _names_for(type_url: str, state: dict[str, Any]) -> list[str]:
        if type_url == ENDPOINT:
            return sorted(state["eds"])
        if type_url == ROUTE:
            return list(state["routes"])
        return []


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--lifetime", type=float, default=60.0, help="mean stream lifetime (s)")
    parser.add_argument("--churn", type=float, default=10.0, help="mean time between subscription changes (s)")
    parser.add_argument("--nack", type=float, default=0.02, help="probability of NACKing a response")
    parser.add_argument("--eds-names", type=int, default=30, help="EDS names first subscribed")
    parser.add_argument("--spread", type=float, default=30.0, help="seconds over which the proxies first connect")
    args = parser.parse_args()
    stats = Stats()
    deadline = time.monotonic() + args.seconds
    proxies = [
        ChurningProxy(target=args.target, index=i, stats=stats, args=args)
        for i in range(args.first, args.first + args.count)
    ]

    async def start(proxy: ChurningProxy, delay: float) -> None:
        await asyncio.sleep(delay)  # spread the first connections, as pods start over time
        await proxy.run(deadline)

    spread = min(args.spread, args.seconds / 4)
    tasks = [asyncio.create_task(start(p, spread * n / len(proxies))) for n, p in enumerate(proxies)]
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException):
            stats.error("ads_client", repr(result))
    with contextlib.suppress(BrokenPipeError):
        json.dump(
            {
                "requests": dict(stats.requests),
                "responses": dict(stats.responses),
                "errors": dict(stats.errors),
                "examples": stats.examples,
            },
            sys.stdout,
        )


if __name__ == "__main__":
    asyncio.run(main())
