"""Simulated sidecars for bench/xds: many SotW ADS streams in one process, each behaving like Envoy.

Each proxy has its own channel, asks for CDS and LDS, ACKs every response, subscribes EDS to the
clusters CDS named and RDS to route `80`, and records when it ACKed which version of each type.
Resource names are read straight from the encoded bytes
(`name` is field 1 of Cluster, ClusterLoadAssignment, Listener and RouteConfiguration, which
deterministic serialization writes first), so a proxy costs little CPU per response.

Connections: gRPC shares one connection among channels to the same target with the same
arguments, so by default the plaintext proxies of one process share one TCP connection (many
HTTP/2 streams). `--connection-per-proxy` gives each channel its own connection, as every Envoy
has; over TLS every proxy always has its own connection.

Every node names its namespace and service account (`identity(index)`). With `--tls-root` the
proxies connect over TLS, trusting that root and checking the server name `--tls-name`, and send
`authorization: Bearer <token>` with the token `--tokens` holds for their namespace/service account
(a JSON object keyed `"<ns>/<sa>"`), as the secure xDS port requires.

Commands on stdin, one JSON line each, answered with one JSON line on stdout:
- `{"cmd": "cpu"}`: `[CPU seconds]` this simulator process has used (all its threads);
- `{"cmd": "synced"}`: the wall time at which each proxy had first ACKed all four types;
- `{"cmd": "wait", "types": [...], "version": V, "eds_complete": bool, "timeout": s}`: for each
  proxy, the wall time by which it ACKed every listed type at version >= V (EDS: a response after
  which it held an assignment for every subscribed cluster when `eds_complete`; like Envoy, it keeps
  the assignments a SotW response leaves out), or null on timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE, SHORT

NAMESPACES = tuple(f"ns-{n}" for n in range(10))
SERVICE_ACCOUNTS = ("sim-a", "sim-b")
TLS_NAME = "istiod.istio-system.svc"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)  # no connection shared with other channels


def identity(index: int) -> tuple[str, str]:
    """The namespace and service account of simulated proxy `index`."""
    return NAMESPACES[index % len(NAMESPACES)], SERVICE_ACCOUNTS[index // len(NAMESPACES) % len(SERVICE_ACCOUNTS)]


@dataclass(frozen=True, kw_only=True)
class Secure:
    """How proxies reach the secure port: the root to trust, the server name to check, a token per ns/sa."""

    root_pem: bytes
    server_name: str
    tokens: dict[str, str]

    def channel(self, target: str) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.root_pem)
        options = [*CHANNEL_OPTIONS, OWN_CONNECTION, ("grpc.ssl_target_name_override", self.server_name)]
        return grpc.aio.secure_channel(target, credentials, options=options)

    def metadata(self, namespace: str, service_account: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[f'{namespace}/{service_account}']}"),)


def _name(value: bytes) -> str:
    if not value or value[0] != 0x0A:
        return ""
    length, shift, index = 0, 0, 1
    while True:
        byte = value[index]
        length |= (byte & 0x7F) << shift
        index += 1
        if not byte & 0x80:
            break
        shift += 7
    return value[index : index + length].decode()


class SimProxy:
    """A SotW client."""

    def __init__(
        self,
        target: str,
        index: int,
        progress: asyncio.Event,
        *,
        secure: Secure | None = None,
        own_connection: bool = False,
    ) -> None:
        self.index = index
        self.progress = progress
        ns, sa = identity(index)
        meta = struct_pb2.Struct()
        meta.update({"NAMESPACE": ns, "SERVICE_ACCOUNT": sa, "ISTIO_VERSION": "1.40.0", "CLUSTER_ID": "Kubernetes"})
        ip = f"10.240.{index // 250}.{index % 250 + 1}"
        self.node = base_pb2.Node(id=f"sidecar~{ip}~sim-{index}.{ns}~{ns}.svc.cluster.local", metadata=meta)
        if secure is None:
            options = [*CHANNEL_OPTIONS, OWN_CONNECTION] if own_connection else CHANNEL_OPTIONS
            self.channel = grpc.aio.insecure_channel(target, options=options)
            self.call_metadata: tuple[tuple[str, str], ...] | None = None
        else:
            self.channel = secure.channel(target)
            self.call_metadata = secure.metadata(ns, sa)
        self.acks: dict[str, list[tuple[int, float, bool]]] = {t: [] for t in SHORT}
        self.eds_names: frozenset[str] = frozenset()
        self.eds_held: set[str] = set()  # assignments received: SotW EDS responses may carry a part
        self.nonces: dict[str, tuple[str, str]] = {}
        self.synced_at: float | None = None

    async def run(self) -> None:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources(
            metadata=self.call_metadata
        )
        await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=self.node))
        await call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
        rds_requested = False
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            type_url = response.type_url
            names = [_name(r.value) for r in response.resources]
            self.nonces[type_url] = (response.nonce, response.version_info)
            subscription: list[str] = []
            if type_url == ENDPOINT:
                subscription = sorted(self.eds_names)
            elif type_url == ROUTE:
                subscription = ["80"]
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=type_url,
                    resource_names=subscription,
                    response_nonce=response.nonce,
                    version_info=response.version_info,
                )
            )
            if type_url == ENDPOINT:
                self.eds_held.update(names)
            complete = type_url != ENDPOINT or self.eds_held >= self.eds_names
            if type_url == CLUSTER:
                clusters = frozenset(n for n in names if n.startswith("outbound|"))
                if clusters != self.eds_names:
                    self.eds_names = clusters
                    self.eds_held &= clusters
                    nonce, version_info = self.nonces.get(ENDPOINT, ("", ""))
                    await call.write(
                        discovery_pb2.DiscoveryRequest(
                            type_url=ENDPOINT,
                            resource_names=sorted(clusters),
                            response_nonce=nonce,
                            version_info=version_info,
                        )
                    )
            elif type_url == LISTENER and not rds_requested:
                rds_requested = True
                await call.write(discovery_pb2.DiscoveryRequest(type_url=ROUTE, resource_names=["80"]))
            self._record(type_url, response.version_info, complete)

    def _record(self, type_url: str, version_info: str, complete: bool) -> None:
        version = int(version_info) if version_info.isdigit() else -1
        self.acks[type_url].append((version, time.time(), complete))
        self.progress.set()
        if self.synced_at is None and all(self.acks[t] for t in SHORT) and self._eds_complete():
            self.synced_at = time.time()

    def _eds_complete(self) -> bool:
        return any(complete for _, _, complete in self.acks[ENDPOINT])

    def acked(self, types: list[str], version: int, *, eds_complete: bool) -> float | None:
        times = []
        for type_url in types:
            found = [
                t
                for v, t, complete in self.acks[type_url]
                if v >= version and (complete or not eds_complete or type_url != ENDPOINT)
            ]
            if not found:
                return None
            times.append(min(found))
        return max(times)


class DeltaSimProxy(SimProxy):
    """A Delta client: tracks the versions it holds, subscribes EDS to new clusters, unsubscribes gone ones."""

    async def run(self) -> None:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).DeltaAggregatedResources(
            metadata=self.call_metadata
        )
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, node=self.node))
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=LISTENER))
        known: dict[str, dict[str, str]] = {t: {} for t in SHORT}
        rds_requested = False
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            type_url = response.type_url
            held = known[type_url]
            for resource in response.resources:
                held[resource.name] = resource.version
            for name in response.removed_resources:
                held.pop(name, None)
            await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce))
            if type_url == CLUSTER:
                clusters = frozenset(n for n in held if n.startswith("outbound|"))
                added, gone = clusters - self.eds_names, self.eds_names - clusters
                if added or gone:
                    self.eds_names = clusters
                    await call.write(
                        discovery_pb2.DeltaDiscoveryRequest(
                            type_url=ENDPOINT,
                            resource_names_subscribe=sorted(added),
                            resource_names_unsubscribe=sorted(gone),
                        )
                    )
            elif type_url == LISTENER and not rds_requested:
                rds_requested = True
                await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ROUTE, resource_names_subscribe=["80"]))
            complete = type_url != ENDPOINT or self.eds_names <= held.keys()
            self._record(type_url, response.system_version_info, complete)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--delta", action="store_true", help="use Delta ADS instead of State of the World")
    parser.add_argument("--tls-root", type=pathlib.Path, help="connect over TLS, trusting this root (PEM)")
    parser.add_argument("--tls-name", default=TLS_NAME, help="server name to check in the TLS certificate")
    parser.add_argument("--tokens", type=pathlib.Path, help='with --tls-root: JSON {"<ns>/<sa>": token}')
    parser.add_argument("--connection-per-proxy", action="store_true", help="plaintext: no shared connections")
    args = parser.parse_args()
    kind = DeltaSimProxy if args.delta else SimProxy
    secure = None
    if args.tls_root is not None:
        tokens = json.loads(args.tokens.read_text()) if args.tokens is not None else {}
        secure = Secure(root_pem=args.tls_root.read_bytes(), server_name=args.tls_name, tokens=tokens)
    progress = asyncio.Event()
    proxies = [
        kind(args.target, i, progress, secure=secure, own_connection=args.connection_per_proxy)
        for i in range(args.first, args.first + args.count)
    ]

    async def until(done: Any, deadline: float) -> None:
        while not done() and (remaining := deadline - time.monotonic()) > 0:
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), min(remaining, 1.0))

    def failed(task: asyncio.Task[None]) -> None:
        # A stream that ends in an error (refused, unreachable) would only show up as a timeout: stop now.
        if not task.cancelled() and (exc := task.exception()) is not None:
            print(f"bench.xds.proxies: a proxy's stream failed: {exc!r}", file=sys.stderr, flush=True)
            os._exit(2)

    tasks = [asyncio.create_task(p.run()) for p in proxies]
    for task in tasks:
        task.add_done_callback(failed)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True, "proxies": len(proxies)}), flush=True)
    by_short = {v: k for k, v in SHORT.items()}
    while line := await reader.readline():
        cmd: dict[str, Any] = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        deadline = time.monotonic() + float(cmd.get("timeout", 120))
        if cmd["cmd"] == "cpu":  # this process's CPU seconds so far, gRPC's threads included
            reply: Any = [time.process_time()]
        elif cmd["cmd"] == "synced":
            await until(lambda: all(p.synced_at is not None for p in proxies), deadline)
            reply = [p.synced_at for p in proxies]
        else:
            types = [by_short[t] for t in cmd["types"]]

            def results() -> list[float | None]:
                return [
                    p.acked(types, cmd["version"], eds_complete=cmd.get("eds_complete", False))  # noqa: B023
                    for p in proxies
                ]

            await until(lambda: None not in results(), deadline)
            reply = results()
        print(json.dumps(reply), flush=True)
    for task in tasks:
        task.cancel()
    for proxy in proxies:
        await proxy.channel.close()


if __name__ == "__main__":
    asyncio.run(main())
