"""Every port shares the process's file descriptors; no port may take what the others need.

Before each listener had a cap, ~20,000 connections to the unauthenticated monitoring port took every
descriptor: no port accepted, and the config-dir watch failed on EMFILE, which stopped the control
plane. These run `meshplane serve` with 2,048 descriptors, so a few thousand connections are enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest

from controlplane.listeners import RESERVED_FILES, SMALL_LISTENER_CAP, ConnectionBudget, open_files_note
from controlplane.settings import SettingsError
from controlplane.tlsfront import SETUP_TIMEOUT
from discovery.xdstypes import CLUSTER, LISTENER
from tests.discovery.harness import SotwClient, node
from tests.helpers.serve import (
    REPO,
    Running,
    admission_review,
    meshplane_cmd,
    post_webhook,
    start_serve,
    with_open_files,
)

OPEN_FILES = 2048
WEBHOOK_CAP = 512
XDS_CAP = OPEN_FILES - RESERVED_FILES - WEBHOOK_CAP - 2 * SMALL_LISTENER_CAP  # 384: what `auto` leaves


@pytest.fixture
def limited(tmp_path: pathlib.Path) -> Iterator[Running]:
    running = start_serve(tmp_path, open_files=OPEN_FILES)
    try:
        yield running
    finally:
        running.stop()


@contextlib.contextmanager
def connections(running: Running, listener: str, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections to `listener` that send nothing; closed on leaving."""
    port = int(running.addr(listener).rsplit(":", 1)[1])
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        yield opened
    finally:
        for conn in opened:
            conn.close()


def open_files(running: Running) -> int:
    return len(list(pathlib.Path(f"/proc/{running.proc.pid}/fd").iterdir()))


def still_open(conns: list[socket.socket]) -> int:
    """How many of `conns` the server has not closed: what it sent (a gRPC port's SETTINGS and GOAWAY) is
    read through; a closed one then reads end-of-file."""
    count = 0
    for conn in conns:
        conn.setblocking(False)
        try:
            while conn.recv(65536):
                pass
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return bool(answer.status == 200)


def webhook_handshake(running: Running) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    port = int(running.addr("webhook").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw):
        pass


async def xds_answers(running: Running) -> bool:
    async with grpc.aio.insecure_channel(running.addr("grpc")) as channel:
        client = SotwClient(channel, node())
        await client.request(CLUSTER)
        return (await client.recv()).type_url == CLUSTER


def wait_for(check: Callable[[], bool], *, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_connections_to_the_metrics_port_leave_the_other_ports_their_files(limited: Running) -> None:
    with connections(limited, "monitoring", 2 * OPEN_FILES) as held:
        wait_for(lambda: still_open(held) <= SMALL_LISTENER_CAP, what="connections beyond the cap closed")
        assert still_open(held) == SMALL_LISTENER_CAP
        assert open_files(limited) < OPEN_FILES - RESERVED_FILES // 2
        assert http_ok(f"{limited.http_url}/ready")
        webhook_handshake(limited)
        assert asyncio.run(xds_answers(limited))
    assert limited.proc.poll() is None
    with urllib.request.urlopen(limited.metrics_url, timeout=10) as answer:
        metrics = answer.read().decode()
    refused = next(line for line in metrics.splitlines() if line.startswith("meshplane_connections_refused_total{"))
    assert 'listener="monitoring"' in refused and float(refused.split()[-1]) >= OPEN_FILES
    assert "monitoring listener refused a connection: 64 open, the most it takes" in limited.logs()


def test_connections_to_the_xds_port_are_capped_within_the_open_files_limit(limited: Running) -> None:
    with connections(limited, "grpc", 2 * OPEN_FILES):
        wait_for(lambda: open_files(limited) < XDS_CAP + 100, what="xDS connections beyond the cap closed")
        assert http_ok(f"{limited.http_url}/ready")
        assert http_ok(limited.metrics_url)
        webhook_handshake(limited)
    assert asyncio.run(xds_answers(limited))  # the slots come back as the connections go
    assert limited.proc.poll() is None
    assert f"connections at most: gRPC {XDS_CAP} on each port, webhook {WEBHOOK_CAP}" in limited.logs()


def test_more_xds_connections_than_the_open_files_limit_holds_is_refused_at_start(tmp_path: pathlib.Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    result = subprocess.run(
        with_open_files(OPEN_FILES, [
            *meshplane_cmd(), "serve", "--config-dir", str(config_dir), "--state-dir", str(tmp_path / "state"),
            "--grpc-addr", "127.0.0.1:0", "--secure-grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
            "--monitoring-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0", "--max-xds-connections", "1000",
        ]),
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        f"--max-xds-connections: 1000 do not fit in the open-files limit ({OPEN_FILES}) after {RESERVED_FILES} kept "
        f"for the process, {WEBHOOK_CAP} for the webhook" in result.stderr
    )
    assert f"at most {XDS_CAP} do: raise the limit (ulimit -n) or lower the flag" in result.stderr


def test_the_xds_cap_is_16384_unless_the_open_files_limit_holds_fewer() -> None:
    assert ConnectionBudget.plan(1_048_576, webhook=512, xds=None).xds == 16384
    assert ConnectionBudget.plan(1_048_576, webhook=512, xds=100_000).xds == 100_000
    assert ConnectionBudget.plan(OPEN_FILES, webhook=512, xds=None).xds == XDS_CAP
    with pytest.raises(SettingsError, match=r"the open-files limit \(1024\) leaves no room for xDS connections"):
        ConnectionBudget.plan(1024, webhook=512, xds=None)


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    """serve and the agent (whose Envoy holds a descriptor per connection of the application) start
    with the most descriptors they are allowed, as Go programs such as istiod and pilot-agent do."""
    script = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (512, 4096)); "
        "from controlplane.listeners import raise_open_files_limit; "
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, check=True, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "(512, 4096) (4096, 4096)"


def test_the_start_up_log_says_raised_only_when_the_limit_was_raised() -> None:
    assert open_files_note(512, 4096) == "4096 (raised from 512)"
    assert open_files_note(4096, 4096) == "4096"


HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # preface, empty SETTINGS


@contextlib.contextmanager
def http2_connections(running: Running, listener: str, count: int) -> Iterator[list[socket.socket]]:
    """`count` HTTP/2 connections to a gRPC port that open no stream (over TLS on the secure port)."""
    port = int(running.addr(listener).rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(running.root_cert))
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            opened.append(conn)
            try:
                if listener == "secure-grpc":
                    opened[-1] = conn = context.wrap_socket(conn, server_hostname="istiod.istio-system.svc")
                conn.sendall(HTTP2_HELLO)
            except OSError:  # closed as it was accepted (over the cap): it stays in the list, closed
                pass
        yield opened
    finally:
        for conn in opened:
            conn.close()


def still_open_tls(conns: list[socket.socket]) -> int:
    """`still_open` for TLS connections, whose records (a GOAWAY, the close) must be read through."""
    count = 0
    for conn in conns:
        try:
            conn.setblocking(False)
            while conn.recv(65536):
                pass
        except (ssl.SSLWantReadError, BlockingIOError):
            count += 1
        except OSError:
            pass
    return count


def test_the_secure_port_holds_as_many_connections_as_the_plaintext_one(limited: Running) -> None:
    """Each idle TLS connection costs the front end ~23 KB (15,000: +343 MB); its cap was 100,000."""
    with http2_connections(limited, "secure-grpc", XDS_CAP + 100) as held:
        wait_for(lambda: still_open_tls(held) <= XDS_CAP, what="secure connections beyond the cap closed")
        assert still_open_tls(held) == XDS_CAP
        assert http_ok(f"{limited.http_url}/ready")
    assert limited.proc.poll() is None
    with http2_connections(limited, "secure-grpc", 1) as fresh:  # the slots come back as the connections go
        time.sleep(0.5)
        assert still_open_tls(fresh) == 1


def test_a_connection_that_opens_no_call_is_closed_after_the_idle_time_and_streams_stay(
    tmp_path: pathlib.Path,
) -> None:
    running = start_serve(tmp_path, "--max-connection-idle", "1s")
    try:

        async def busy_stream_outlives_the_idle_time() -> bool:
            async with grpc.aio.insecure_channel(running.addr("grpc")) as channel:
                client = SotwClient(channel, node())
                await client.request(CLUSTER)
                await client.recv()
                await asyncio.sleep(3)
                await client.request(LISTENER)  # the same stream, three idle times later
                return (await client.recv()).type_url == LISTENER

        with (
            http2_connections(running, "grpc", 20) as plaintext,
            http2_connections(running, "secure-grpc", 20) as secure,
            connections(running, "secure-grpc", 20) as silent_secure,  # no TLS hello: its handshake is late
            connections(running, "grpc", 20) as silent_plaintext,  # no preface: held for gRPC's 120 s before
        ):
            assert (still_open(plaintext), still_open_tls(secure)) == (20, 20)
            assert asyncio.run(busy_stream_outlives_the_idle_time())
            wait_for(lambda: still_open(plaintext) + still_open_tls(secure) == 0, what="idle connections closed")
            wait_for(lambda: still_open(silent_secure) + still_open(silent_plaintext) == 0, what="silent ones closed")
    finally:
        running.stop()


def test_a_plaintext_connection_that_never_sends_its_preface_is_closed_after_the_setup_time(limited: Running) -> None:
    """gRPC waited 120 s for a client's preface and SETTINGS, so connections that sent nothing held their
    places on 15010 twelve times as long as a TLS handshake may take on 15012."""
    with connections(limited, "grpc", 20) as silent, http2_connections(limited, "grpc", 20) as hello:
        wait_for(lambda: still_open(silent) == 0, what="silent connections closed", timeout=SETUP_TIMEOUT + 5)
        assert still_open(hello) == 20  # past their setup: kept for the idle time, 5 minutes


def test_silent_connections_to_the_webhook_count_against_its_cap_and_leave_the_process_its_files(
    limited: Running,
) -> None:
    """They counted only once their TLS handshake had finished: 3,000 that never sent a hello took
    every descriptor, and no port could accept (`/ready` timed out)."""
    with connections(limited, "webhook", 3000) as held:
        wait_for(lambda: still_open(held) <= WEBHOOK_CAP, what="webhook connections beyond the cap closed")
        assert still_open(held) == WEBHOOK_CAP
        assert open_files(limited) < OPEN_FILES - RESERVED_FILES // 2
        assert http_ok(f"{limited.http_url}/ready")
        assert asyncio.run(xds_answers(limited))
    assert "cannot accept a connection" not in limited.logs()


def test_a_client_holding_every_webhook_place_with_silent_connections_gives_them_up_to_another(
    limited: Running,
) -> None:
    """The API server's review gets through while another address keeps the webhook port full of
    connections that send nothing: each new connection of the API server's takes one of theirs."""
    port = int(limited.addr("webhook").rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        for _ in range(WEBHOOK_CAP + 50):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)))
        wait_for(lambda: still_open(held) == WEBHOOK_CAP, what="the webhook port full")
        for attempt in range(3):
            status, review = post_webhook(limited, admission_review(pod_for_review(attempt)))
            assert status == 200 and review["response"]["allowed"] is True, review
        assert still_open(held) == WEBHOOK_CAP - 1  # the first took one; each review closes and leaves its place
    finally:
        for conn in held:
            conn.close()


def pod_for_review(index: int) -> dict[str, object]:
    return {
        "metadata": {"name": f"app-{index}", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }


@pytest.mark.parametrize("sent", [b"", b"GET /ready HTTP/1.1\r\nHost: istiod\r\n"], ids=["silent", "trickling"])
def test_a_client_filling_the_ready_port_with_unfinished_requests_does_not_keep_the_probe_out(
    limited: Running, sent: bytes
) -> None:
    """The kubelet's readiness probe is answered while another address holds every place of `/ready`
    with connections that send nothing, or headers they never finish (the probe's connection takes
    one of theirs)."""
    port = int(limited.addr("http").rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        for _ in range(SMALL_LISTENER_CAP + 20):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)))
            with contextlib.suppress(OSError):  # closed as it was accepted (over the cap)
                held[-1].sendall(sent)
        wait_for(lambda: still_open(held) == SMALL_LISTENER_CAP, what="the /ready port full")
        for _ in range(3):
            assert http_ok(f"{limited.http_url}/ready")
    finally:
        for conn in held:
            conn.close()


def test_connections_past_their_handshake_that_send_nothing_give_their_place_up_too(limited: Running) -> None:
    port = int(limited.addr("webhook").rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(limited.root_cert))
    context.check_hostname = False
    held: list[socket.socket] = []
    try:
        for _ in range(WEBHOOK_CAP):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))
            held.append(context.wrap_socket(raw, server_hostname="istiod.istio-system.svc"))
        status, review = post_webhook(limited, admission_review(pod_for_review(0)))
        assert status == 200 and review["response"]["allowed"] is True, review
        assert still_open_tls(held) == WEBHOOK_CAP - 1
    finally:
        for conn in held:
            conn.close()
