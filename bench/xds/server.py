"""The control plane under test for bench/xds: the real registry, discovery service and ADS server.

It holds the mesh in an in-memory ConfigStore (the config-dir poll and YAML parsing would only add
noise) and takes commands, one JSON object per line on stdin, answering one JSON line on stdout:

- `{"cmd": "endpoint"}`: add one endpoint to service 0; answers the model version it produced;
- `{"cmd": "service"}`: add one new HTTP service with endpoints; answers version and cluster name;
- `{"cmd": "floor", "version": V, "cluster": C}`: write, to every stream, the same responses the
  last service addition produced (pre-serialized before the clock starts), with version V;
- `{"cmd": "rss"}`: resident memory and CPU seconds of this process (and of its front end);
  `{"cmd": "stats"}`: streams and cache; `{"cmd": "gc"}`: what a full garbage collection walks and how
  long one takes (`collector_load`).

By default ADS is served on a plaintext port (the role of :15010). With `--secure-grpc-addr` it is
served the way `meshplane serve` serves :15012 instead: a local CA in `--state-dir` (which publishes
`<state-dir>/root-cert.pem` and accepts `meshplane token` tokens minted with the same state dir),
the Envoy TLS front end (tuned by `--front-tuning`: `FrontTuning` fields as JSON) forwarding to
the internal gRPC server on a Unix socket, and ADS with `secure=True`, so every stream's caller
identity (here: a bearer token) must match its node's namespace and service account. `rss` then
also reports the front end's (Envoy's) memory.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import pathlib
import sys
import time
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from certs.runtime import local_ca
from certs.serving import serving_names
from controlplane.grpcserver import GrpcServers
from controlplane.model.registry import Registry
from controlplane.model.store import ConfigStore, ObjectKey
from controlplane.settings import Address
from controlplane.tlsfront import FrontTuning
from discovery.connection import StreamLimits, Watched
from discovery.generators import SIDECAR, GenContext, ProxyView
from discovery.server import AdsServer
from discovery.service import DiscoveryService
from discovery.xdstypes import CLUSTER, ENDPOINT, ROUTE
from tests.discovery import meshdata as m

NAMESPACES = tuple(f"ns-{n}" for n in range(10))


def rss_bytes(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int | str = "self") -> tuple[float, float]:
    """User and system CPU time of a process, seconds ((0, 0) if it is gone)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def collector_load() -> dict[str, Any]:
    """What a full garbage collection walks in this process (start-up's objects are frozen, as in
    `meshplane serve`), how long one takes, and the most numerous kinds of tracked object."""
    gc.collect()
    tracked = gc.get_objects()
    kinds = collections.Counter(type(o).__qualname__ for o in tracked).most_common(12)
    count = len(tracked)
    del tracked
    started = time.perf_counter()
    gc.collect()
    return {"tracked": count, "full_gc_s": time.perf_counter() - started, "kinds": dict(kinds)}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.store = ConfigStore()
        objects = m.mesh_objects(
            args.services, namespaces=NAMESPACES, endpoints_per_service=args.endpoints, tcp_port=lambda i: 9000 + i
        )
        self.store.apply([(ObjectKey.of(o), o) for o in objects])
        self.registry = Registry(self.store)
        self.service = DiscoveryService(
            self.registry,
            debounce_quiet=args.debounce,
            debounce_max=max(args.debounce, 10.0),
            limits=StreamLimits(streams_per_client=1_000_000),  # every simulated proxy has the same address
        )
        self.server: grpc.aio.Server | None = None
        self.secure: GrpcServers | None = None
        self.port = 0
        self.endpoints_added = 0
        self.services_added = 0

    def apply(self, *objects: dict[str, Any]) -> int:
        self.store.apply([(ObjectKey.of(o), o) for o in objects])
        return self.registry.version

    def command(self, cmd: dict[str, Any]) -> Any:
        kind = cmd["cmd"]
        if kind == "endpoint":
            self.endpoints_added += 1
            ns = NAMESPACES[0]
            base = [f"10.10.0.{n + 1}" for n in range(4)]
            extra = [f"10.250.{self.endpoints_added // 250}.{self.endpoints_added % 250 + 1}"]
            version = self.apply(m.endpoint_slice("svc-0", ns, ips=base + extra))
            return {"version": version, "cluster": f"outbound|80||svc-0.{ns}.svc.cluster.local"}
        if kind == "service":
            self.services_added += 1
            name, ns = f"added-{self.services_added}", NAMESPACES[0]
            ips = [f"10.251.{self.services_added}.{n + 1}" for n in range(4)]
            version = self.apply(
                m.service(name, ns, cluster_ip=f"10.99.0.{self.services_added}"), m.endpoint_slice(name, ns, ips=ips)
            )
            return {"version": version, "cluster": f"outbound|80||{name}.{ns}.svc.cluster.local"}
        if kind == "rss":  # the whole server: this process and its front end
            pid = self.secure.front.pid if self.secure is not None and self.secure.front is not None else None
            own, front = rss_bytes(), (rss_bytes(pid) if pid is not None else 0)
            cpu: dict[str, float] = {}
            for part, of in (("process", "self"), ("front_end", pid)):
                user, system = cpu_seconds(of) if of is not None else (0.0, 0.0)
                cpu |= {f"cpu_{part}": user + system, f"kernel_{part}": system}
            return {"rss": own + front, "rss_process": own, "rss_front_end": front, **cpu}
        if kind == "stats":
            return self.stats()
        if kind == "gc":
            return collector_load()
        raise ValueError(f"unknown command {kind!r}")

    async def start(self, args: argparse.Namespace) -> None:
        """Start serving: plaintext, or (with `--secure-grpc-addr`) the secure port as `meshplane serve` wires it."""
        if args.secure_grpc_addr is None:
            self.server = grpc.aio.server(
                options=[
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ]
            )
            AdsServer(self.service, secure=False).register(self.server)
            self.port = self.server.add_insecure_port(f"127.0.0.1:{args.port}")
            await self.server.start()
            return
        addr = Address.parse(args.secure_grpc_addr, field="--secure-grpc-addr")
        ca = await local_ca(
            state_dir=args.state_dir,
            trust_domain="cluster.local",
            serving_hosts=serving_names(service="istiod", namespace="istio-system"),
        )
        tuning = FrontTuning(**json.loads(args.front_tuning)) if args.front_tuning else FrontTuning()
        self.secure = GrpcServers(plaintext_addr=None, secure_addr=addr, serving=ca.serving, front_tuning=tuning)
        peers = self.secure.peer_certificates

        ca.service.peer_certificate = peers.for_context  # as `meshplane serve` wires it
        ads = AdsServer(self.service, secure=True, identify=ca.service.identities_of, peer_name=peers.client_of)
        self.secure.add(ads.register, plaintext=False, secure=True)
        await self.secure.start()
        assert self.secure.front is not None
        self.port = self.secure.front.port  # the bound one, also for port 0

    async def stop(self) -> None:
        if self.secure is not None:
            await self.secure.stop(0)
        if self.server is not None:
            await self.server.stop(0)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"streams": len(self.service.streams), "cache": self.service.cache.stats()}
        if self.secure is not None and self.secure.front is not None:
            stats["front_end_restarts"] = self.secure.front.restarts
        return stats

    async def floor(self, version: int, cluster: str) -> dict[str, Any]:
        """Send pre-serialized copies of the service-addition responses to every stream; time the writes."""
        snapshot = self.registry.snapshot()
        payloads: dict[str, list[bytes]] = {}
        streams = [s for s in self.service.streams.values() if s.conn is not None]
        for stream in streams:
            assert stream.conn is not None
            ns = stream.conn.proxy.namespace
            if ns in payloads:
                continue
            ctx = GenContext(
                snapshot=snapshot, view=ProxyView.build(stream.conn.proxy, snapshot), cache=self.service.cache
            )
            messages = []
            # The push (CDS, RDS; no LDS, whose content did not change; no EDS, the new cluster is not
            # subscribed yet), then the answer to the grown EDS subscription (the new cluster's alone).
            for type_url, watched in (
                (CLUSTER, Watched(type_url=CLUSTER, wildcard=True)),
                (ROUTE, Watched(type_url=ROUTE, names=frozenset({"80"}))),
                (ENDPOINT, Watched(type_url=ENDPOINT, names=frozenset({cluster}))),
            ):
                body = b"".join(g.blob for g in SIDECAR[type_url].generate(ctx, watched).groups)
                header = discovery_pb2.DiscoveryResponse(
                    version_info=str(version), type_url=type_url, nonce=f"floor-{version}"
                ).SerializeToString()
                messages.append(body + header)
            payloads[ns] = messages
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for stream in streams:
            queue.put_nowait(stream)

        async def worker() -> None:
            while not queue.empty():
                stream = queue.get_nowait()
                assert stream.conn is not None
                for payload in payloads[stream.conn.proxy.namespace]:
                    await stream.write(payload)

        started = time.time()
        await asyncio.gather(*(worker() for _ in range(self.service.push_concurrency)))
        return {"started": started, "written": time.time() - started, "streams": len(streams)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=4)
    parser.add_argument("--debounce", type=float, default=0.1)
    parser.add_argument("--secure-grpc-addr", help="serve ADS only here, over TLS as on :15012 (port 0: any)")
    parser.add_argument("--state-dir", type=pathlib.Path, help="with --secure-grpc-addr: the local CA's state dir")
    parser.add_argument("--front-tuning", help="with --secure-grpc-addr: FrontTuning fields as a JSON object")
    args = parser.parse_args()
    if args.secure_grpc_addr is not None and args.state_dir is None:
        parser.error("--secure-grpc-addr needs --state-dir")
    bench = Bench(args)
    await bench.start(args)
    gc.collect()
    gc.freeze()  # as `meshplane serve` does once started: what start-up built stays out of full collections
    runner = asyncio.create_task(bench.service.run())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    secure = bench.secure is not None
    print(json.dumps({"ready": True, "port": bench.port, "secure": secure, "rss": rss_bytes()}), flush=True)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            if cmd["cmd"] == "floor":
                reply = await bench.floor(cmd["version"], cmd["cluster"])
            else:
                started = time.time()
                reply = {"t": started, **bench.command(cmd)}
        except Exception as exc:  # the coordinator prints it
            reply = {"error": repr(exc)}
        print(json.dumps(reply), flush=True)
    runner.cancel()
    await bench.stop()


if __name__ == "__main__":
    asyncio.run(main())
