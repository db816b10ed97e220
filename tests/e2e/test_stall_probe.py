"""No input freezes the process: `/ready` keeps answering while heavy or hostile inputs arrive.

One event loop serves the webhook, the CA, xDS and `/ready`, so a CPU-heavy step on it stalls them
all. A separate prober process polls `/ready` every 50 ms while the test sends, one after another,
the inputs that used to freeze `meshplane serve` for seconds: 1,000 Services with an injected Pod
each whose clusters and 2,000 assignments 20 proxies ask for, then every Pod with another service
account, a config file with 10,000 endpoints, one of 10,000 Pods and the same with every Pod
changed, `proxy.istio.io/config` annotations at and far over the size limit, deeply nested
annotation values, a 1.9 MB pod, 150 webhook bodies of 53 KB completing at the same moment, 1,000
TLS client hellos arriving on the webhook port at once, an RDS request for 5,000 route names in a
mesh of 1,000 Services, ten config dumps of a proxy in that mesh and ten dumps of its registry at
once, 90 streams asking for 10,000 endpoint names each at the same moment, a Service of 100 ports
with 1,000 endpoints whose 100 assignments 20 proxies ask for at once, then with every endpoint
changed, 1,000 Services each selected by its own PeerAuthentication (20 proxies asking for their
clusters, then every policy changed), xDS nodes with 40,000 `INSTANCE_IPS` on the plaintext and the
secure port, and requests whose maps (node metadata, Delta initial versions, a CSR request's
metadata) hold hundreds of thousands of entries, and mesh ConfigMaps of 60 KB (with 40 small pods
injected at once under it), nested 5,000 deep, and of 950 KB. Any poll that waits over 250 ms fails
the test (the issue's bound), naming the input it overlapped.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse

from certs.service import METHOD_PATH as CA_METHOD
from protos.gen.istio.v1.auth.ca_pb2 import IstioCertificateRequest
from tests.discovery.harness import SotwClient, first_sotw_response, node
from tests.helpers.protowire import length_delimited, struct_of
from tests.helpers.readyprobe import Prober
from tests.helpers.serve import SERVER_NAME, Running, admission_review, post_webhook, start_serve

STALL_LIMIT = 0.250  # seconds a single /ready poll may wait
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService"


@pytest.fixture
def running(tmp_path: pathlib.Path) -> Iterator[Running]:
    # A webhook cap above the 1,000 hellos sent at once: a connection counts from its accept, and the
    # default 512 would close the rest before their handshakes, which are the load measured here.
    served = start_serve(tmp_path, env={"MESHPLANE_WEBHOOK_MAX_CONNECTIONS": "2000"})
    try:
        yield served
    finally:
        served.stop()


def big_endpoints(namespace: str, service: str, count: int) -> str:
    """A Service and `count` endpoints in EndpointSlices of 1,000 (the API server's per-slice limit)."""
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service, "namespace": namespace},
            "spec": {"clusterIP": "10.96.50.50", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
    ]
    for start in range(0, count, 1000):
        endpoints = [
            {
                "addresses": [f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": f"{service}-{i}", "namespace": namespace},
            }
            for i in range(start, min(start + 1000, count))
        ]
        docs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{service}-{start // 1000}",
                    "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": service},
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }
        )
    return yaml.safe_dump_all(docs)


def many_pods(count: int, *, account: str) -> str:
    """`count` running Pods of service account `account`, the last one the endpoint of a Service."""
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "pods"}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "last", "namespace": "pods"},
            "spec": {"clusterIP": "10.96.60.60", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
    ]
    address = [f"10.60.{i // 250}.{i % 250 + 1}" for i in range(count)]
    docs.append(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "last", "namespace": "pods", "labels": {"kubernetes.io/service-name": "last"}},
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [address[-1]],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": f"pod-{count - 1}", "namespace": "pods"},
                }
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }
    )
    docs += [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"pod-{i}", "namespace": "pods", "labels": {"app": "bulk"}},
            "spec": {"serviceAccountName": account, "containers": [{"name": "app", "image": "example.com/app:1"}]},
            "status": {"phase": "Running", "podIP": address[i]},
        }
        for i in range(count)
    ]
    return yaml.dump_all(docs, Dumper=yaml.CSafeDumper)


def many_services(count: int) -> str:
    """`count` Services in namespace `many`, with HTTP ports 8000-8049."""
    docs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "many"}}]
    for i in range(count):
        ports = [{"name": "http", "port": 8000 + i % 50, "targetPort": 8080}]
        spec = {"clusterIP": f"10.97.{i // 250}.{i % 250 + 1}", "ports": ports}
        docs.append(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i}", "namespace": "many"}, "spec": spec}
        )
    return yaml.safe_dump_all(docs)


def wide_service(ports: int, count: int, *, subnet: int) -> str:
    """A Service of `ports` ports whose one EndpointSlice holds `count` endpoints on all of them (the
    API server's limits: 100 ports and 1,000 endpoints a slice), addresses in 10.<subnet>.0.0/16."""
    service_ports = [{"name": f"p{p}", "port": 9000 + p, "targetPort": 19000 + p} for p in range(ports)]
    endpoints = [
        {"addresses": [f"10.{subnet}.{i // 250}.{i % 250 + 1}"], "conditions": {"ready": True}} for i in range(count)
    ]
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "wide"}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "w", "namespace": "wide"},
            "spec": {"clusterIP": "10.96.70.70", "ports": service_ports},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "w-0", "namespace": "wide", "labels": {"kubernetes.io/service-name": "w"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": f"p{p}", "port": 19000 + p, "protocol": "TCP"} for p in range(ports)],
        },
    ]
    return yaml.dump_all(docs, Dumper=yaml.CSafeDumper)


def selected_services(count: int) -> str:
    """`count` Services in namespace `sel`, each selecting its own app."""
    docs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sel"}}]
    for i in range(count):
        spec = {
            "clusterIP": f"10.98.{i // 250}.{i % 250 + 1}",
            "selector": {"app": f"app-{i}"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        }
        docs.append(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s-{i}", "namespace": "sel"}, "spec": spec}
        )
    return yaml.dump_all(docs, Dumper=yaml.CSafeDumper)


def workload_policies(count: int, mode: str) -> str:
    """`count` PeerAuthentications in namespace `sel`, one per app of `selected_services`."""
    docs = [
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": f"pa-{i}", "namespace": "sel"},
            "spec": {"selector": {"matchLabels": {"app": f"app-{i}"}}, "mtls": {"mode": mode}},
        }
        for i in range(count)
    ]
    return yaml.dump_all(docs, Dumper=yaml.CSafeDumper)


def sidecar_mesh(count: int, *, account: str) -> str:
    """`count` Services in namespace `big`, each with two ports and one injected Pod of service
    account `account` behind it (its EndpointSlice names the Pod)."""
    docs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "big"}}]
    ports = [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "grpc", "port": 9090, "targetPort": 9090}]
    for i in range(count):
        ip = f"10.77.{i // 250}.{i % 250 + 1}"
        docs += [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"s{i}", "namespace": "big"},
                "spec": {"clusterIP": f"10.99.{i // 250}.{i % 250 + 1}", "selector": {"app": f"a{i}"}, "ports": ports},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": f"s{i}-0", "namespace": "big", "labels": {"kubernetes.io/service-name": f"s{i}"}},
                "addressType": "IPv4",
                "endpoints": [
                    {
                        "addresses": [ip],
                        "conditions": {"ready": True},
                        "targetRef": {"kind": "Pod", "name": f"p{i}", "namespace": "big"},
                    }
                ],
                "ports": [
                    {"name": "http", "port": 8080, "protocol": "TCP"},
                    {"name": "grpc", "port": 9090, "protocol": "TCP"},
                ],
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"p{i}",
                    "namespace": "big",
                    "labels": {"app": f"a{i}"},
                    "annotations": {"sidecar.istio.io/status": "{}"},
                },
                "spec": {
                    "serviceAccountName": account,
                    "containers": [{"name": "app", "image": "app:1"}, {"name": "istio-proxy", "image": "proxyv2:1"}],
                },
                "status": {"phase": "Running", "podIP": ip},
            },
        ]
    return yaml.dump_all(docs, Dumper=yaml.CSafeDumper)


async def wide_subscribers(
    address: str, count: int, names: list[str]
) -> tuple[list[grpc.aio.Channel], list[SotwClient]]:
    """`count` SotW clients (a channel each) that asked for and ACKed the assignments of `names`."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(count)]
    clients = [SotwClient(channel, node(f"wide-{i}", ip=f"10.3.0.{i + 1}")) for i, channel in enumerate(channels)]

    async def subscribe(client: SotwClient) -> None:
        await client.request(ENDPOINT, names)
        response = await client.recv(wait=60)
        assert len(response.resources) == len(names)
        await client.ack(response, names)

    await asyncio.gather(*(subscribe(client) for client in clients))
    return channels, clients


def pod(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "heavy", "namespace": "default", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
    }


def app_named(name: str) -> dict[str, Any]:
    """A one-container pod whose container is called `name` (the sidecar's env lists it)."""
    found = pod({})
    found["spec"]["containers"][0]["name"] = name
    return found


def many_containers(count: int) -> dict[str, Any]:
    """A pod of `count` containers, each with a port and HTTP readiness and liveness probes to rewrite."""
    containers = [
        {
            "name": f"c{i}",
            "image": "example.com/app:1",
            "ports": [{"containerPort": 8000 + i}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8000 + i}},
            "livenessProbe": {"httpGet": {"path": "/live", "port": 8000 + i}},
        }
        for i in range(count)
    ]
    return {**pod({}), "spec": {"containers": containers}}


def proxy_config_of(size: int) -> str:
    """A valid ProxyConfig YAML of about `size` bytes (many proxyMetadata entries)."""
    lines = ["proxyMetadata:"]
    i = 0
    while sum(len(line) + 1 for line in lines) < size:
        lines.append(f"  KEY_{i}: value-{i:08d}")
        i += 1
    return "\n".join(lines) + "\n"


async def raw_call(channel: grpc.aio.Channel, method: str, request: bytes, *, stream: bool) -> grpc.StatusCode:
    """Send `request` (bytes) on `method` and close `channel`; the status the call ended with."""
    identity = {"request_serializer": lambda raw: raw, "response_deserializer": lambda raw: raw}
    try:
        if stream:
            async for _ in channel.stream_stream(method, **identity)(iter([request]), timeout=30):
                pass
        else:
            await channel.unary_unary(method, **identity)(request, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close()
    raise AssertionError(f"{method} accepted the request")


def secure_channel(running: Running) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=running.root_cert.read_bytes())
    return grpc.aio.secure_channel(
        running.addr("secure-grpc"), creds, options=[("grpc.ssl_target_name_override", "istiod.istio-system.svc")]
    )


async def webhook_burst(running: Running, body: bytes | list[bytes], *, connections: int) -> set[int]:
    """POST `body` (or the `body[i]` each) on `connections` connections at once: every byte but the
    last is sent first, then the last byte on all of them together. The HTTP statuses of the answers."""
    bodies = body if isinstance(body, list) else [body] * connections
    context = running.client_ssl_context()
    port = running.ports["webhook"]
    opened = [
        await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=SERVER_NAME)
        for _ in range(connections)
    ]
    try:
        for (_, writer), data in zip(opened, bodies, strict=True):
            head = (
                f"POST /inject HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            ).encode()
            writer.write(head + data[:-1])
            await writer.drain()
        for (_, writer), data in zip(opened, bodies, strict=True):
            writer.write(data[-1:])
        await asyncio.gather(*(writer.drain() for _, writer in opened))
        return {int((await reader.readline()).split()[1]) for reader, _ in opened}
    finally:
        for _, writer in opened:
            writer.close()


HELLO_BURST = r"""
import resource, select, socket, ssl, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
port, count = int(sys.argv[1]), int(sys.argv[2])
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
outgoing = ssl.MemoryBIO()
try:
    context.wrap_bio(ssl.MemoryBIO(), outgoing).do_handshake()
except ssl.SSLWantReadError:
    pass
hello = outgoing.read()
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
for sock in socks:
    sock.sendall(hello)
waiting, deadline = set(socks), time.monotonic() + 60
while waiting and time.monotonic() < deadline:
    readable, _, _ = select.select(list(waiting)[:1000], [], [], 1)
    for sock in readable:
        sock.recv(65536)
        waiting.discard(sock)
print(count - len(waiting))
"""


async def hello_burst(running: Running, count: int) -> int:
    """Open `count` connections to the webhook port, then send a TLS client hello on all of them at
    once (each makes the server do a handshake's costly half); how many the server answered."""
    cmd = [sys.executable, "-c", HELLO_BURST, str(running.ports["webhook"]), str(count)]
    done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120, check=True)
    return int(done.stdout)


async def many_heavy_requests(address: str, *, streams: int, names: int, rounds: int) -> None:
    """`streams` SotW streams (one channel each, as many proxies behind one address) that each ask for
    `names` EDS names at once, `rounds` times, each time for other names; every request is answered.
    The requests are serialized beforehand, so they reach the server together."""
    method = f"{ADS}/StreamAggregatedResources"
    channels = [grpc.aio.insecure_channel(address) for _ in range(streams)]
    batches = [
        DiscoveryRequest(
            type_url=ENDPOINT,
            resource_names=[f"outbound|80||h{n}.many.svc.cluster.local" for n in range(r * names, (r + 1) * names)],
        ).SerializeToString()
        for r in range(rounds)
    ]
    nodes = [
        DiscoveryRequest(node=node(pod=f"heavy-{i}", ip=f"10.2.{i // 250}.{i % 250 + 1}")).SerializeToString()
        for i in range(streams)
    ]
    calls = [channel.stream_stream(method)() for channel in channels]
    try:
        for r, batch in enumerate(batches):
            await asyncio.gather(*(call.write(nodes[i] + batch if r == 0 else batch) for i, call in enumerate(calls)))
            for call in calls:
                response = DiscoveryResponse.FromString(await asyncio.wait_for(call.read(), 60))
                assert len(response.resources) == names
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


async def xds_refused(address: str, *, secure_root: bytes | None) -> grpc.StatusCode:
    """Open an ADS stream with 40,000 INSTANCE_IPS; the server's refusal code."""
    ips = ",".join(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(40_000))

    def open_channel() -> grpc.aio.Channel:
        if secure_root is None:
            return grpc.aio.insecure_channel(address)
        creds = grpc.ssl_channel_credentials(root_certificates=secure_root)
        options = [("grpc.ssl_target_name_override", "istiod.istio-system.svc")]
        return grpc.aio.secure_channel(address, creds, options=options)

    try:  # the secure port refuses as the stream opens: the helper retries a write that raced it
        await first_sotw_response(open_channel, node(INSTANCE_IPS=ips), CLUSTER)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    raise AssertionError("the oversized node was accepted")


async def test_ready_never_waits_over_250ms_while_heavy_inputs_arrive(running: Running) -> None:
    assert running.config_dir is not None
    prober = Prober(running)
    try:
        await asyncio.sleep(0.5)

        registry_url = f"{running.http_url}/debug/registryz"
        prober.mark("1,000 Services of two ports, each with an injected Pod")
        (running.config_dir / "rollout.yaml").write_text(sidecar_mesh(1_000, account="first"))
        await until(lambda: "s999.big.svc.cluster.local" in _get(registry_url), "the 1,000 Services")
        big = [f"outbound|{port}||s{i}.big.svc.cluster.local" for i in range(1_000) for port in (80, 9090)]
        prober.mark("20 proxies asking for their clusters and the 2,000 assignments at once")
        channels = [grpc.aio.insecure_channel(running.addr("grpc")) for _ in range(20)]
        try:
            clients = [
                SotwClient(channel, node(f"p{i}", ns="big", ip=f"10.77.0.{i + 1}"))
                for i, channel in enumerate(channels)
            ]

            async def subscribe(client: SotwClient) -> None:
                await client.request(CLUSTER, [])
                await client.ack(await client.recv(wait=60))
                await client.request(ENDPOINT, big)
                await client.ack(await client.recv(wait=60), big)

            await asyncio.gather(*(subscribe(client) for client in clients))
            prober.mark("every Pod of the 1,000 Services with another service account, pushed to 20 proxies")
            (running.config_dir / "rollout.yaml").write_text(sidecar_mesh(1_000, account="second"))
            pushed = await asyncio.gather(*(client.recv(wait=60) for client in clients))
            assert {response.type_url for response in pushed} <= {CLUSTER, ENDPOINT}
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))
        (running.config_dir / "rollout.yaml").unlink()

        prober.mark("a config file with 10,000 endpoints")
        (running.config_dir / "big.yaml").write_text(big_endpoints("bulk", "big", 10_000))
        deadline = time.monotonic() + 60
        while "big.bulk.svc.cluster.local" not in await asyncio.to_thread(_get, registry_url):
            assert time.monotonic() < deadline, "the 10,000-endpoint file was never applied"
            await asyncio.sleep(0.2)

        for account, what in [("first", "a config file with 10,000 Pods"), ("second", "that file, every Pod changed")]:
            prober.mark(what)
            (running.config_dir / "pods.yaml").write_text(many_pods(10_000, account=account))
            await until(lambda a=account: f'"service_account": "{a}"' in _get(registry_url), what)  # type: ignore[misc]

        prober.mark("a 60 KB proxy.istio.io/config (under the limit)")
        status, _ = await asyncio.to_thread(
            post_webhook, running, admission_review(pod({"proxy.istio.io/config": proxy_config_of(60_000)}))
        )
        assert status == 200
        prober.mark("a 250 KB proxy.istio.io/config (over the limit)")
        status, _ = await asyncio.to_thread(
            post_webhook, running, admission_review(pod({"proxy.istio.io/config": proxy_config_of(250_000)}))
        )
        assert status == 200  # answered: the AdmissionReview carries the refusal, not a 500
        for nested in ("[" * 1000, "{" * 5000, "- " * 1000):
            prober.mark(f"a proxy.istio.io/config nested {len(nested)} deep")
            status, _ = await asyncio.to_thread(
                post_webhook, running, admission_review(pod({"proxy.istio.io/config": nested}))
            )
            assert status < 500

        prober.mark("a 1.9 MB pod of 8,000 containers with probes (under the 3 MiB limit)")
        status, body = await asyncio.to_thread(post_webhook, running, admission_review(many_containers(8_000)))
        assert status == 200 and body["response"].get("patchType") == "JSONPatch", body["response"]

        prober.mark("150 webhook requests of 53 KB whose bodies complete at the same moment")
        statuses = await webhook_burst(running, admission_review(many_containers(250)), connections=150)
        assert statuses == {200}

        prober.mark("1,000 TLS client hellos at once on the webhook port")
        assert await hello_burst(running, 1_000) == 1_000

        prober.mark("a config file with 1,000 Services on 50 ports")
        (running.config_dir / "many.yaml").write_text(many_services(1_000))
        deadline = time.monotonic() + 60
        while "svc-999.many.svc.cluster.local" not in await asyncio.to_thread(_get, registry_url):
            assert time.monotonic() < deadline, "the 1,000-service file was never applied"
            await asyncio.sleep(0.2)
        prober.mark("an RDS request for 5,000 route names (ports)")
        channel = grpc.aio.insecure_channel(running.addr("grpc"))
        try:
            routes = SotwClient(channel, node())
            await routes.request(ROUTE, [str(port) for port in range(1, 5_001)])
            assert len((await routes.recv(wait=60)).resources) == 5_000
        finally:
            await channel.close()

        prober.mark("10 config dumps of a proxy in a mesh of 1,000 Services and 10,000 endpoints at once")
        channel = grpc.aio.insecure_channel(running.addr("grpc"))
        try:
            dumped = SotwClient(channel, node("dumped"))
            await dumped.request(CLUSTER, [])
            assert len((await dumped.recv(wait=60)).resources) > 1_000
            dump_url = f"{running.http_url}/debug/config_dump?proxyID=dumped.default"
            dumps = await asyncio.gather(*(asyncio.to_thread(_get, dump_url) for _ in range(10)))
            assert all("svc-999.many.svc.cluster.local" in dump for dump in dumps)
        finally:
            await channel.close()
        prober.mark("10 /debug/registryz of that mesh at once")
        found = await asyncio.gather(*(asyncio.to_thread(_get, registry_url) for _ in range(10)))
        assert all(len(json.loads(answer)["services"]) > 1_000 for answer in found)

        prober.mark("90 streams from one address, each asking for 10,000 endpoint names at once, 3 times")
        await many_heavy_requests(running.addr("grpc"), streams=90, names=10_000, rounds=3)

        prober.mark("a Service of 100 ports with 1,000 endpoints (100,000 endpoint ports)")
        (running.config_dir / "wide.yaml").write_text(wide_service(100, 1_000, subnet=110))
        await until(lambda: "w.wide.svc.cluster.local" in _get(registry_url), "the 100-port Service")
        wide = [f"outbound|{9000 + p}||w.wide.svc.cluster.local" for p in range(100)]
        prober.mark("20 proxies asking for its 100 assignments at once")
        channels, subscribers = await wide_subscribers(running.addr("grpc"), 20, wide)
        try:
            prober.mark("every endpoint of the 100-port Service changed, pushed to its 20 subscribers")
            (running.config_dir / "wide.yaml").write_text(wide_service(100, 1_000, subnet=120))
            pushed = await asyncio.gather(*(client.recv(wait=60) for client in subscribers))
            for response in pushed:
                first = ClusterLoadAssignment.FromString(response.resources[0].value)
                assert first.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "10.120.0.1"
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))
        (running.config_dir / "wide.yaml").unlink()

        prober.mark("1,000 Services, each selected by its own PeerAuthentication")
        (running.config_dir / "selected.yaml").write_text(selected_services(1_000))
        (running.config_dir / "policies.yaml").write_text(workload_policies(1_000, "STRICT"))
        await until(lambda: "sel/pa-999" in _get(registry_url), "the 1,000 PeerAuthentications")
        prober.mark("20 proxies asking for their clusters at once")
        channels = [grpc.aio.insecure_channel(running.addr("grpc")) for _ in range(20)]
        try:
            clients = [SotwClient(channel, node(f"sel-{i}", ns="sel")) for i, channel in enumerate(channels)]
            await asyncio.gather(*(client.request(CLUSTER, []) for client in clients))
            answers = await asyncio.gather(*(client.recv(wait=60) for client in clients))
            await asyncio.gather(*(client.ack(answer) for client, answer in zip(clients, answers, strict=True)))
            prober.mark("every one of the 1,000 PeerAuthentications changed, clusters pushed to 20 proxies")
            (running.config_dir / "policies.yaml").write_text(workload_policies(1_000, "DISABLE"))
            pushed = await asyncio.gather(*(client.recv(wait=60) for client in clients))
            assert all(len(response.resources) > 1_000 for response in pushed)
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))
        (running.config_dir / "policies.yaml").unlink()
        (running.config_dir / "selected.yaml").unlink()

        prober.mark("40,000 INSTANCE_IPS on the plaintext xDS port")
        code = await xds_refused(running.addr("grpc"), secure_root=None)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        prober.mark("40,000 INSTANCE_IPS on the secure port, without credentials")
        code = await xds_refused(running.addr("secure-grpc"), secure_root=running.root_cert.read_bytes())
        assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

        # 4.0 MB, just under gRPC's request limit (a larger message is refused before anything reads it);
        # parsing a Struct costs the square of its fields
        fields = struct_of(250_000)
        prober.mark("a node of 250,000 metadata fields on the plaintext xDS port")
        node_request = DiscoveryRequest(type_url=CLUSTER).SerializeToString() + length_delimited(
            2, length_delimited(3, fields)
        )
        channel = grpc.aio.insecure_channel(running.addr("grpc"))
        code = await raw_call(channel, f"{ADS}/StreamAggregatedResources", node_request, stream=True)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        prober.mark("250,000 Delta initial_resource_versions on the plaintext xDS port")
        delta = DeltaDiscoveryRequest(node=node(), type_url=CLUSTER)
        delta.initial_resource_versions.update((f"k{i}", "v") for i in range(250_000))
        delta_request = delta.SerializeToString()
        channel = grpc.aio.insecure_channel(running.addr("grpc"))
        code = await raw_call(channel, f"{ADS}/DeltaAggregatedResources", delta_request, stream=True)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        prober.mark("a CSR request with 250,000 metadata fields on the secure port, without credentials")
        channel = secure_channel(running)
        ca_request = IstioCertificateRequest(csr="x").SerializeToString() + length_delimited(4, fields)
        code = await raw_call(channel, CA_METHOD, ca_request, stream=False)
        assert code is grpc.StatusCode.UNAUTHENTICATED

        mesh_file = running.config_dir / "mesh.yaml"
        injectz_url = f"{running.http_url}/debug/injectz"
        prober.mark("a mesh ConfigMap of 60 KB (under the limit)")
        default_config = "".join(f"  {line}\n" for line in proxy_config_of(55_000).splitlines())
        mesh_file.write_text(mesh_configmap("defaultConfig:\n" + default_config))
        await until(lambda: json.loads(_get(injectz_url))["config"]["meshConfigMap"]["used"], "the mesh config")
        prober.mark("40 small, different pods at once under that mesh config (2,078 proxyMetadata entries in each)")
        different = [admission_review(app_named(f"app-{i}")) for i in range(40)]  # each renders anew
        statuses = await webhook_burst(running, different, connections=40)
        assert statuses == {200}
        for what, mesh, refusal in [
            ("a mesh ConfigMap nested 5,000 deep", "[" * 5_000, "column 1001"),
            ("a mesh ConfigMap of 950 KB (over the limit)", proxy_config_of(950_000), "at most 65,536"),
        ]:
            prober.mark(what)
            mesh_file.write_text(mesh_configmap(mesh))
            await until(lambda r=refusal: r in _get(registry_url), what)  # type: ignore[misc]
        mesh_file.unlink()

        prober.mark("(after the last input)")
        await asyncio.sleep(0.5)
        polls = prober.finish()
    finally:
        prober.kill()

    assert len(polls) > 20, "the prober barely ran"
    assert all(status == 200 for _, _, status in polls), [p for p in polls if p[2] != 200][:5]
    slow = [(waited, prober.during(at)) for at, waited, _ in polls if waited > STALL_LIMIT]
    assert not slow, "/ready waited over 250 ms: " + "; ".join(f"{w * 1000:.0f} ms during {what}" for w, what in slow)


def mesh_configmap(mesh: str) -> str:
    return yaml.safe_dump(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"}}
        | {"data": {"mesh": mesh}}
    )


async def until(check: Callable[[], Any], what: str, *, within: float = 60) -> None:
    """Poll `check` (in a thread) until it is true; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"{what} was never applied"
        await asyncio.sleep(0.2)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())
