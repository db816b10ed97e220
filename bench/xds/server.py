"""The control plane under test for bench/xds: the real registry, discovery service and ADS server.

It holds the mesh in an in-memory ConfigStore (the config-dir poll and YAML parsing would only add
noise) and takes commands, one JSON object per line on stdin, answering one JSON line on stdout:

- `{"cmd": "endpoint"}`: add one endpoint to service 0; answers the model version it produced;
- `{"cmd": "service"}`: add one new HTTP service with endpoints; answers version and cluster name;
- `{"cmd": "floor", "version": V, "cluster": C}`: write, to every stream, the same responses the
  last service addition produced (pre-serialized before the clock starts), with version V;
- `{"cmd": "rss"}`: resident memory of this process; `{"cmd": "stats"}`: streams and cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.model.registry import Registry
from controlplane.model.store import ConfigStore, ObjectKey
from discovery.connection import Watched
from discovery.generators import SIDECAR, GenContext, ProxyView
from discovery.server import AdsServer
from discovery.service import DiscoveryService
from discovery.xdstypes import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.discovery import meshdata as m

NAMESPACES = tuple(f"ns-{n}" for n in range(10))


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.store = ConfigStore()
        objects = m.mesh_objects(
            args.services, namespaces=NAMESPACES, endpoints_per_service=args.endpoints, tcp_port=lambda i: 9000 + i
        )
        self.store.apply([(ObjectKey.of(o), o) for o in objects])
        self.registry = Registry(self.store)
        self.service = DiscoveryService(
            self.registry, debounce_quiet=args.debounce, debounce_max=max(args.debounce, 10.0)
        )
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ]
        )
        AdsServer(self.service, secure=False).register(self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{args.port}")
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
        if kind == "rss":
            return {"rss": rss_bytes()}
        if kind == "stats":
            return {"streams": len(self.service.streams), "cache": self.service.cache.stats()}
        raise ValueError(f"unknown command {kind!r}")

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
            eds_names = stream.conn.watched[ENDPOINT].names
            messages = []
            for type_url, watched in (
                (CLUSTER, Watched(type_url=CLUSTER, wildcard=True)),
                (ENDPOINT, Watched(type_url=ENDPOINT, names=eds_names - {cluster})),
                (LISTENER, Watched(type_url=LISTENER, wildcard=True)),
                (ROUTE, Watched(type_url=ROUTE, names=frozenset({"80"}))),
                (ENDPOINT, Watched(type_url=ENDPOINT, names=eds_names)),
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
    args = parser.parse_args()
    bench = Bench(args)
    await bench.server.start()
    runner = asyncio.create_task(bench.service.run())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True, "port": bench.port, "rss": rss_bytes()}), flush=True)
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
    await bench.server.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
