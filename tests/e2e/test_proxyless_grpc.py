"""grpcio's built-in xDS client against `meshplane serve`: resolve, balance, and follow endpoint removal.

The client runs in its own process (the xDS client is a process-wide singleton configured from
GRPC_XDS_BOOTSTRAP) and prints which backend answered each call; the two backends are real gRPC
servers in this process, on 127.0.0.1 and 127.0.0.2 with the same port.
"""

from __future__ import annotations

import json
import pathlib
import queue
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from tests.discovery import meshdata as m
from tests.e2e.envoyproxy import wait_for
from tests.helpers.serve import Running, free_port, start_serve

METHOD = "/meshplane.test.Echo/Who"
TARGET_PORT = 7070

CLIENT = r"""
import sys, time, grpc
channel = grpc.insecure_channel(sys.argv[1])
call = channel.unary_unary(sys.argv[2], request_serializer=None, response_deserializer=None)
while True:
    try:
        print(call(b"", timeout=10).decode(), flush=True)
    except grpc.RpcError as exc:
        print("error:" + exc.code().name + ":" + (exc.details() or ""), flush=True)
        time.sleep(0.1)
    time.sleep(0.01)
"""


def backend(host: str, port: int, name: str) -> grpc.Server:
    def who(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        return name.encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "meshplane.test.Echo",
        {"Who": grpc.unary_unary_rpc_method_handler(who, request_deserializer=None, response_serializer=None)},
    )
    server.add_generic_rpc_handlers((handler,))
    assert server.add_insecure_port(f"{host}:{port}") == port
    server.start()
    return server


def mesh(port: int, ips: list[str]) -> str:
    return m.dump_yaml(
        [
            m.service(
                "echo", ports=[{"name": "grpc", "port": TARGET_PORT, "targetPort": port}], cluster_ip="10.96.7.7"
            ),
            *(
                m.endpoint_slice("echo", ips=[ip], port=port, port_name="grpc", name=f"echo-{n}")
                for n, ip in enumerate(ips)
            ),
        ]
    )


class Client:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def take(self, count: int, *, timeout: float = 30.0) -> list[str]:
        return [self.lines.get(timeout=timeout) for _ in range(count)]


@pytest.fixture
def running(tmp_path: pathlib.Path) -> Iterator[tuple[Running, pathlib.Path, int]]:
    config = tmp_path / "config"
    config.mkdir()
    port = free_port()
    (config / "echo.yaml").write_text(mesh(port, ["127.0.0.1", "127.0.0.2"]))
    serve = start_serve(tmp_path, "--config-dir", str(config), env={"PILOT_DEBOUNCE_AFTER": "0s"})
    try:
        yield serve, config, port
    finally:
        serve.stop()


def bootstrap(path: pathlib.Path, xds_port: int) -> dict[str, Any]:
    data = {
        "xds_servers": [
            {
                "server_uri": f"127.0.0.1:{xds_port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {
            "id": "sidecar~127.0.0.9~client-0.default~default.svc.cluster.local",
            "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default", "ISTIO_VERSION": "1.40.0"},
            "locality": {},
        },
    }
    path.write_text(json.dumps(data))
    return data


def test_grpc_xds_client_balances_and_drops_a_removed_backend(
    tmp_path: pathlib.Path, running: tuple[Running, pathlib.Path, int]
) -> None:
    serve, config, port = running
    servers = [backend("127.0.0.1", port, "backend-a"), backend("127.0.0.2", port, "backend-b")]
    boot = tmp_path / "grpc-bootstrap.json"
    bootstrap(boot, serve.ports["grpc"])
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, f"xds:///echo.default.svc.cluster.local:{TARGET_PORT}", METHOD],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"GRPC_XDS_BOOTSTRAP": str(boot), "PATH": "/usr/bin:/bin"},
    )
    try:
        client = Client(proc)
        seen = Counter(wait_for(lambda: _both(client), timeout=60, what="calls to reach both backends"))
        assert set(seen) == {"backend-a", "backend-b"}, seen

        (config / "echo.yaml").write_text(mesh(port, ["127.0.0.1"]))
        wait_for(lambda: set(client.take(20)) == {"backend-a"}, timeout=60, what="backend-b to be dropped")
        assert set(client.take(30)) == {"backend-a"}

        syncz = json.loads(_get(f"{serve.http_url}/debug/syncz"))
        (entry,) = [p for p in syncz if p["proxy"] == "client-0.default"]
        assert entry["generator"] == "grpc"
        assert {t: v["status"] for t, v in entry["types"].items()} == {
            "CDS": "SYNCED",
            "EDS": "SYNCED",
            "LDS": "SYNCED",
            "RDS": "SYNCED",
        }
    finally:
        proc.kill()
        proc.wait()
        for server in servers:
            server.stop(0)


def _both(client: Client) -> list[str] | None:
    batch = client.take(20)
    errors = [line for line in batch if line.startswith("error:")]
    if errors and len(errors) == len(batch):
        return None
    return batch if {"backend-a", "backend-b"} <= set(batch) else None


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()
