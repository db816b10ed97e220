"""`meshplane serve` as a process: readiness, metrics, clean shutdown, startup errors."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from discovery.xdstypes import CLUSTER
from tests.discovery.harness import SotwClient, node
from tests.helpers.serve import SERVER_NAME, Running, meshplane_cmd, start_serve

POD_REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "in-flight-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "default",
        "operation": "CREATE",
        "object": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        },
    },
}


def test_ready_and_metrics(serve: Running) -> None:
    with urllib.request.urlopen(f"{serve.http_url}/ready", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(serve.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE sidecar_injection_requests_total counter" in text
    assert "sidecar_injection_time_seconds_bucket" in text


def test_debug_index_lists_the_debug_endpoints(serve: Running) -> None:
    for path in ("/debug", "/debug/"):
        with urllib.request.urlopen(f"{serve.http_url}{path}", timeout=5) as resp:
            endpoints = json.loads(resp.read())["endpoints"]
        assert {"/ready", "/debug/syncz", "/debug/registryz", "/debug/config_dump", "/debug/configz"} <= set(endpoints)


def test_sigterm_finishes_an_in_flight_request_and_exits_0(serve: Running) -> None:
    body = json.dumps(POD_REVIEW).encode()
    ctx = serve.client_ssl_context()
    raw = socket.create_connection(("127.0.0.1", serve.ports["webhook"]), timeout=30)
    with ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as conn:
        head = (
            f"POST /inject HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        conn.sendall(head + body[:100])
        time.sleep(0.5)  # the server is now inside the handler, waiting for the rest of the body
        serve.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        conn.sendall(body[100:])
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    status_line = response.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 200 OK", response[:500]
    review = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert review["response"]["uid"] == "in-flight-1" and review["response"]["allowed"] is True
    assert serve.proc.wait(30) == 0
    assert "received SIGTERM" in serve.logs()


def test_new_connections_are_refused_after_sigterm(tmp_path: pathlib.Path) -> None:
    running = start_serve(tmp_path)
    assert running.stop() == 0
    try:
        socket.create_connection(("127.0.0.1", running.ports["webhook"]), timeout=2).close()
    except OSError:
        pass
    else:
        raise AssertionError("webhook port still accepts connections after shutdown")


def test_missing_config_dir_is_a_clear_startup_error(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [*meshplane_cmd(), "serve", "--config-dir", str(tmp_path / "absent"), "--state-dir", str(tmp_path / "s")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "absent" in result.stderr and "does not exist" in result.stderr


def test_the_longest_connection_times_grpc_takes_start_and_a_longer_one_is_a_clear_error(
    tmp_path: pathlib.Path,
) -> None:
    """gRPC takes connection times as an int of milliseconds: 720h raised OverflowError at start."""
    running = start_serve(tmp_path, "--max-connection-age", "596h31m23.647s", "--max-connection-idle", "596h")
    assert running.stop() == 0  # it was ready: start_serve waits for /ready
    result = subprocess.run(
        [*meshplane_cmd(), "serve", "--config-dir", str(tmp_path / "config"), "--state-dir", str(tmp_path / "state"),
         "--max-connection-age", "720h"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--max-connection-age: '720h' must be 0 (for ever) or from 1ms to 596h31m23s" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_names_the_address(tmp_path: pathlib.Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        (tmp_path / "c").mkdir()
        result = subprocess.run(
            [
                *meshplane_cmd(), "serve", "--config-dir", str(tmp_path / "c"), "--state-dir", str(tmp_path / "s"),
                "--grpc-addr", "127.0.0.1:0", "--secure-grpc-addr", "127.0.0.1:0",
                "--http-addr", "127.0.0.1:0", "--monitoring-addr", "127.0.0.1:0",
                "--webhook-addr", f"127.0.0.1:{port}",
            ],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr and "webhook" in result.stderr


def test_listening_json_names_the_ports_bound_for_port_0_and_goes_away_on_stop(tmp_path: pathlib.Path) -> None:
    listening = tmp_path / "state" / "listening.json"
    listening.parent.mkdir()
    listening.write_text(json.dumps({"pid": 1, "listeners": {"http": "127.0.0.1:1"}}))  # a previous run's
    running = start_serve(tmp_path)  # every listener on 127.0.0.1:0
    try:
        found = json.loads(listening.read_text())
        assert found["pid"] == running.proc.pid
        assert set(found["listeners"]) == {"grpc", "secure-grpc", "webhook", "monitoring", "http"}
        ports = {int(address.removeprefix("127.0.0.1:")) for address in found["listeners"].values()}
        assert len(ports) == 5 and 0 not in ports
        for port in ports:  # each one really accepts connections
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        with urllib.request.urlopen(f"http://{found['listeners']['http']}/ready", timeout=10) as resp:
            assert resp.status == 200
    finally:
        assert running.stop() == 0
    assert not listening.exists()


def test_webhook_certificate_verifies_against_the_published_root(serve: Running) -> None:
    ctx = serve.client_ssl_context()
    with (
        socket.create_connection(("127.0.0.1", serve.ports["webhook"]), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as conn,
    ):
        cert = conn.getpeercert()
    names = {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}
    assert names >= {"istiod.istio-system.svc"}
    key_mode = (serve.state_dir / "ca" / "ca-key.pem").stat().st_mode & 0o777
    assert key_mode == 0o600
    bad = ssl.create_default_context()  # system roots: must not trust the mesh CA
    with socket.create_connection(("127.0.0.1", serve.ports["webhook"]), timeout=10) as raw:
        try:
            bad.wrap_socket(raw, server_hostname=SERVER_NAME).close()
        except ssl.SSLCertVerificationError:
            pass
        else:
            raise AssertionError("serving certificate verified against system roots")


def serve_once(
    state_dir: pathlib.Path, config_dir: pathlib.Path, *extra: str, user: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`meshplane serve` expected to refuse to start; as `user` (a uid) when given."""
    config_dir.mkdir(exist_ok=True)
    as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    return subprocess.run(
        [
            *as_user, *meshplane_cmd(), "serve", "--config-dir", str(config_dir), "--state-dir", str(state_dir),
            "--grpc-addr", "127.0.0.1:0", "--secure-grpc-addr", "127.0.0.1:0",
            "--http-addr", "127.0.0.1:0", "--monitoring-addr", "127.0.0.1:0",
            "--webhook-addr", "127.0.0.1:0", *extra,
        ],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_lost_ca_dir_is_refused_and_the_published_root_is_kept(tmp_path: pathlib.Path) -> None:
    first = start_serve(tmp_path)
    assert first.stop() == 0
    bundle = first.root_cert.read_bytes()
    shutil.rmtree(first.state_dir / "ca")
    result = serve_once(first.state_dir, tmp_path / "config")
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert message.startswith("meshplane: ") and "Traceback" not in result.stderr
    assert str(first.state_dir / "ca" / "ca-key.pem") in message and "ca-cert.pem" in message
    assert str(first.root_cert) in message and "--allow-new-root" in message
    assert first.root_cert.read_bytes() == bundle
    again = start_serve(tmp_path, "--allow-new-root")
    try:
        assert again.root_cert.read_bytes() != bundle
        ctx = again.client_ssl_context()  # the webhook's certificate now chains to the new root
        with socket.create_connection(("127.0.0.1", again.ports["webhook"]), timeout=10) as raw:
            ctx.wrap_socket(raw, server_hostname=SERVER_NAME).close()
    finally:
        assert again.stop() == 0


def test_a_state_dir_below_a_file_is_a_clean_startup_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "occupied").write_text("")
    state_dir = tmp_path / "occupied" / "state"
    result = serve_once(state_dir, tmp_path / "config")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(state_dir) in result.stderr and "Not a directory" in result.stderr


@pytest.fixture
def shared_dir() -> Iterator[pathlib.Path]:
    """A directory another user can reach (pytest's tmp_path is private to root)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="meshplane-serve-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)  # as root: the read-only directory inside goes too


NOBODY = 65534


def test_an_unwritable_state_dir_is_a_clean_startup_error(shared_dir: pathlib.Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run meshplane as another user")
    state_dir = shared_dir / "state"
    state_dir.mkdir(mode=0o555)
    state_dir.chmod(0o555)  # root's, not writable by the user meshplane runs as
    config_dir = shared_dir / "config"
    result = serve_once(state_dir, config_dir, user=NOBODY)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(state_dir) in result.stderr and "Permission denied" in result.stderr
    assert list(state_dir.iterdir()) == []


async def test_one_address_may_hold_100_xds_streams_and_the_next_is_refused_by_default(serve: Running) -> None:
    channel = grpc.aio.insecure_channel(serve.addr("grpc"))
    try:
        clients = [SotwClient(channel, node(pod=f"app-{i}", ip=f"10.1.0.{i + 1}")) for i in range(100)]
        for client in clients:
            await client.request(CLUSTER)
        for client in clients:
            await client.recv()
        extra = SotwClient(channel, node(pod="app-100", ip="10.1.1.1"))  # a call starts when it is created
        # refused as it opens, so nothing is written: a write racing the refusal makes grpcio report INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await extra.recv()
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (refused.value.details() or "").startswith("client 127.0.0.1 already has 100 xDS streams open")
        assert "--max-streams-per-client=100" in (refused.value.details() or "")
        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(serve.metrics_url, timeout=10).read())
        assert 'meshplane_xds_streams_refused{code="RESOURCE_EXHAUSTED"} 1.0' in metrics.decode()
    finally:
        await channel.close()


async def request_of(size: int, serve: Running) -> grpc.StatusCode | None:
    """Send one CDS request of about `size` bytes (long resource names) on a new stream: the status the
    stream ended with, or None when it was answered."""
    channel = grpc.aio.insecure_channel(serve.addr("grpc"))
    try:
        client = SotwClient(channel, node(pod=f"sender-{size}"))
        await client.request(CLUSTER, [f"{i:06}-" + "x" * 1017 for i in range(size // 1024)])
        try:
            await client.recv()
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return None
    finally:
        await channel.close()


async def test_a_request_message_over_4_mib_is_refused_and_one_under_it_is_served(serve: Running) -> None:
    """gRPC takes a request message in whole, up to the limit, before the handler sees any of it: a
    client that sends most of a large message and stops makes the server hold it for every stream it
    has open. At 16 MiB, 100 such streams of one address held 1.7 GB. Istio's limit, 4 MiB, is twice
    the largest request meshplane takes (a 1 MiB node and 10,000 names)."""
    assert await request_of(4 * 1024 * 1024 - 64 * 1024, serve) is None
    assert await request_of(4 * 1024 * 1024 + 64 * 1024, serve) is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_max_request_bytes_sets_the_largest_request_message_taken(tmp_path: pathlib.Path) -> None:
    running = await asyncio.to_thread(start_serve, tmp_path, "--max-request-bytes", "2MiB")
    try:
        assert await request_of(2 * 1024 * 1024 - 64 * 1024, running) is None
        assert await request_of(2 * 1024 * 1024 + 64 * 1024, running) is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await asyncio.to_thread(running.stop)
