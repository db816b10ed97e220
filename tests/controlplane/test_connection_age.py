"""Client connections to the xDS ports age out, as istiod's do (`keepaliveMaxServerConnectionAge`).

A proxy keeps its xDS stream, and so its connection, for as long as both stay up: after a replica
restarts or a new one is added, every proxy would stay on the replicas it first reached. After
`--max-connection-age` the server asks the client to go (HTTP/2 GOAWAY) and ends the stream
`CONNECTION_AGE_GRACE` seconds later at most; the client reconnects on a new connection, which the
Kubernetes Service may send to any replica. Envoy, the secure port's TLS front end, sends the
GOAWAY but keeps a connection while a stream is open on it, so there meshplane ends the stream.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from controlplane.grpcserver import CONNECTION_AGE_GRACE
from tests.discovery.harness import SotwClient, node
from tests.helpers.serve import Running, meshplane_cmd, start_serve

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
MAX_AGE = 2.0


@pytest.fixture
def aging(tmp_path: pathlib.Path) -> Iterator[Running]:
    served = start_serve(tmp_path, "--max-connection-age", f"{MAX_AGE:g}s")
    try:
        yield served
    finally:
        served.stop()


def channel_to(running: Running, port: str) -> grpc.aio.Channel:
    if port == "grpc":
        return grpc.aio.insecure_channel(running.addr("grpc"))
    command = ["token", "--namespace", "default", "--service-account", "app", "--state-dir", str(running.state_dir)]
    token = subprocess.run(
        [*meshplane_cmd(), *command],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=running.root_cert.read_bytes()),
        grpc.access_token_call_credentials(token),
    )
    options = [("grpc.ssl_target_name_override", "istiod.istio-system.svc")]
    return grpc.aio.secure_channel(running.addr("secure-grpc"), creds, options=options)


def peer_of(running: Running, pod: str) -> str:
    with urllib.request.urlopen(f"{running.http_url}/debug/syncz", timeout=10) as resp:
        found = [p["peer"] for p in json.loads(resp.read()) if p["proxy"] == f"{pod}.default"]
    assert len(found) == 1, found
    return str(found[0])


async def lifetime_of_a_stream(running: Running, port: str) -> tuple[float, str, str]:
    """How long the first stream of a proxy on `port` lasted, how it ended, and whether the stream the
    proxy then opens on the same channel comes from another connection (the peers' client ports)."""
    pod = f"app-on-{port}"
    channel = channel_to(running, port)
    try:
        first = SotwClient(channel, node(pod=pod, SERVICE_ACCOUNT="app"))
        started = time.monotonic()
        await first.request(CLUSTER)
        await first.ack(await first.recv())
        before = await asyncio.to_thread(peer_of, running, pod)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await first.recv(wait=MAX_AGE * 1.2 + CONNECTION_AGE_GRACE + 10)
        lasted = time.monotonic() - started
        again = SotwClient(channel, node(pod=pod, SERVICE_ACCOUNT="app"))
        await again.request(CLUSTER)
        assert (await again.recv()).resources
        after = await asyncio.to_thread(peer_of, running, pod)
        assert after != before, f"the new stream came over the old connection ({before})"
        return lasted, f"{ended.value.code().name}: {ended.value.details()}", after
    finally:
        await channel.close()


async def test_a_proxy_is_moved_to_a_new_connection_after_the_max_connection_age(aging: Running) -> None:
    plaintext, secure = await asyncio.gather(lifetime_of_a_stream(aging, "grpc"), lifetime_of_a_stream(aging, "secure"))
    for lasted, status, _ in (plaintext, secure):
        assert MAX_AGE * 0.9 <= lasted <= MAX_AGE * 1.2 + CONNECTION_AGE_GRACE + 5, (lasted, status)  # + a busy machine
        assert status.startswith("UNAVAILABLE"), status
    assert "reached its maximum age (2s, --max-connection-age); reconnect" in secure[1]
