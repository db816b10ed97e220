"""What a user of the demo mesh must see: mTLS identities and policy, certificate rotation under traffic,
endpoints coming and going, and a control plane that dies and comes back - with no failed request.

Every test runs a real `DemoMesh` (meshplane serve, one agent per workload, their Envoys, the apps) on random
127.x.y.0/24 ranges, so the tests run beside each other and beside a user's demo. The assertions read what a user
reads: the apps' counters and the XFCC header they got, the agents' /debug/certs, the control plane's
/debug/syncz and `meshplane proxy-status`, Envoy's admin stats, the certificate a sidecar presents on the wire.
Durations are printed (`pytest -s`), never asserted.
"""

from __future__ import annotations

import functools
import http.client
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509

from controlplane.demo.mesh import DemoMesh
from controlplane.demo.plan import (
    AGENT_PORT,
    ENVOY_ADMIN_PORT,
    REVIEWS,
    PlanError,
    Role,
    Workload,
    required_binds,
    workloads,
)
from controlplane.demo.procs import taken
from controlplane.demo.stats import AppStats, read_stats
from controlplane.demo.status import get_json, syncz_by_proxy
from tests.demo.helpers import free_plan, kill_processes_mentioning, processes_mentioning
from tests.e2e.envoyproxy import wait_for

FRONTEND_ID = "spiffe://cluster.local/ns/demo/sa/frontend"
NO_CLIENT_CERT = "(no client certificate)"  # how a server app counts a caller without a certificate
XDS_TYPES = {"CDS", "EDS", "LDS", "RDS"}
RPS = 10.0

MeshFactory = Callable[..., DemoMesh]


@pytest.fixture
def start_mesh(tmp_path: pathlib.Path) -> Iterator[MeshFactory]:
    """Start a demo mesh (with traffic flowing) on free addresses; afterwards stop it and check that none of its
    processes is left and that every address it listened on is free again - also when the test failed."""
    meshes: list[DemoMesh] = []

    def start(**options: Any) -> DemoMesh:
        mesh = DemoMesh(tmp_path / f"mesh{len(meshes)}", plan=free_plan(), rps=RPS, **options)
        meshes.append(mesh)
        mesh.start()
        mesh.wait_for_traffic(timeout=60)
        return mesh

    yield start
    for mesh in meshes:
        dead = mesh.dead()
        mesh.stop()
        left = processes_mentioning(str(mesh.workdir))
        kill_processes_mentioning(str(mesh.workdir))
        assert left == {}, f"processes left behind: {left}"
        assert dead == [], "parts of the mesh exited although nobody stopped them"
        assert taken(required_binds(mesh.plan, workloads(mesh.plan))) == []


# -- what a user reads ------------------------------------------------------------------------------


def stats(mesh: DemoMesh, name: str) -> AppStats:
    found = mesh.app_stats().get(name)
    assert found is not None, f"{name}'s app has written no counters"
    return found


def answered(mesh: DemoMesh, name: str) -> int:
    return sum(stats(mesh, name).backends.values())


def served(mesh: DemoMesh, name: str) -> AppStats | None:
    """The server app's counters once it has served a request, else None."""
    s = stats(mesh, name)
    return s if s.served > 0 else None


def answered_by(mesh: DemoMesh, caller: str, backend: str) -> AppStats | None:
    """The caller's counters once `backend` has answered it, else None."""
    s = stats(mesh, caller)
    return s if s.backends.get(backend) else None


def assert_no_failures(mesh: DemoMesh, *names: str) -> None:
    for name in names:
        s = stats(mesh, name)
        assert s.failed == 0, f"{name}: {s.failed} of {s.sent} requests failed: {dict(s.errors)}"


def wait_for_answers(mesh: DemoMesh, name: str, count: int, *, timeout: float = 60.0) -> None:
    """Wait until caller `name` has `count` more answers than now."""
    target = answered(mesh, name) + count
    wait_for(lambda: answered(mesh, name) >= target, timeout=timeout, what=f"{count} more answers to {name}")


def workload(mesh: DemoMesh, name: str) -> Workload:
    return next(w for w in mesh.workloads if w.name == name)


def plaintext_get(host: str, port: int) -> int | BaseException:
    """One plaintext HTTP request: the status, or the exception that ended it."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/plaintext", headers={"Host": REVIEWS.hostname})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return exc
    finally:
        conn.close()


def presented_serial(host: str, port: int, *, root: pathlib.Path) -> str:
    """The serial (hex) of the certificate a sidecar presents on its inbound port, checked against the mesh root.

    The sidecar demands a client certificate we do not have, but with TLS 1.3 the client has the server's
    certificate once its side of the handshake is done; the refusal comes after."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # mesh certificates name a SPIFFE identity, not a host
    ctx.load_verify_locations(cafile=str(root))
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


def envoy_cert_serials(w: Workload) -> set[str]:
    """The serials (hex) of the workload certificates Envoy holds now, in every TLS context (its admin /certs)."""
    certs = get_json(f"http://{w.loopback}:{ENVOY_ADMIN_PORT}/certs", timeout=5)["certificates"]
    return {format(int(c["serial_number"], 16), "x") for ctx in certs for c in ctx.get("cert_chain", [])}


def envoy_stat(w: Workload, name: str) -> int:
    url = f"http://{w.loopback}:{ENVOY_ADMIN_PORT}/stats?filter=^{name}$&format=json"
    found = [s["value"] for s in get_json(url, timeout=5)["stats"] if s.get("name") == name]
    assert found, f"{w.name}'s Envoy has no stat {name}"
    return int(found[0])


def edit(path: pathlib.Path, old: str, new: str) -> None:
    """Replace the one `old` in a config file, as an editor saving the whole file would (atomically)."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{path} should hold {old!r} once"
    tmp = path.with_name(f".{path.name}.edit")
    tmp.write_text(text.replace(old, new), encoding="utf-8")
    os.replace(tmp, path)


def synced_proxies(mesh: DemoMesh) -> dict[str, dict[str, str]]:
    """Proxy name -> {xDS type: status} from the control plane's /debug/syncz (empty when it is unreachable)."""
    try:
        return syncz_by_proxy(get_json(f"http://{mesh.control_plane_http}/debug/syncz"))
    except OSError:
        return {}


def in_sync(mesh: DemoMesh) -> set[str]:
    """The demo proxies for which the control plane has every xDS type SYNCED."""
    syncz = synced_proxies(mesh)
    return {
        w.proxy_name
        for w in mesh.workloads
        if set(types := syncz.get(w.proxy_name, {})) == XDS_TYPES and set(types.values()) == {"SYNCED"}
    }


def every_proxy_synced(mesh: DemoMesh) -> bool:
    return in_sync(mesh) == {w.proxy_name for w in mesh.workloads}


def processes_in_group(pgid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


# -- 1. mTLS and policy ---------------------------------------------------------------------------


def test_callers_are_identified_by_certificate_and_strict_refuses_plaintext_until_permissive(
    start_mesh: MeshFactory,
) -> None:
    mesh = start_mesh()
    v1 = workload(mesh, "reviews-v1")

    # The reviews apps got the frontend's identity from their sidecars, in x-forwarded-client-cert.
    for name in ("reviews-v1", "reviews-v2"):
        s = wait_for(functools.partial(served, mesh, name), what=f"{name} to serve")
        assert f"URI={FRONTEND_ID}" in s.last_xfcc, s.last_xfcc
        assert set(s.peers) == {FRONTEND_ID}, s.peers
    assert set(stats(mesh, "frontend").peers) == {FRONTEND_ID}

    # STRICT (the demo's default): plaintext straight to the pod's inbound port is cut off, no HTTP answer.
    refused = plaintext_get(v1.pod_ip, REVIEWS.port)
    assert isinstance(refused, ConnectionError), f"STRICT answered plaintext with {refused!r}"

    namespace_yaml = mesh.config_dir / "namespace.yaml"
    edit(namespace_yaml, "mode: STRICT", "mode: PERMISSIVE")
    wait_for(lambda: plaintext_get(v1.pod_ip, REVIEWS.port) == 200, timeout=60, what="PERMISSIVE to accept plaintext")
    plaintext_answers = 1 + sum(plaintext_get(v1.pod_ip, REVIEWS.port) == 200 for _ in range(3))
    assert plaintext_answers == 4
    # The plaintext requests reached the app without a client identity; the frontend still talks mTLS.
    wait_for(lambda: stats(mesh, "reviews-v1").peers.get(NO_CLIENT_CERT) == plaintext_answers, what="counters")
    frontend_calls = stats(mesh, "reviews-v1").peers[FRONTEND_ID]
    wait_for(lambda: stats(mesh, "reviews-v1").peers[FRONTEND_ID] > frontend_calls + 5, what="more frontend calls")

    edit(namespace_yaml, "mode: PERMISSIVE", "mode: STRICT")
    wait_for(
        lambda: isinstance(plaintext_get(v1.pod_ip, REVIEWS.port), ConnectionError),
        timeout=60,
        what="STRICT to refuse plaintext again",
    )
    wait_for_answers(mesh, "frontend", 20)
    assert_no_failures(mesh, "frontend")
    assert mesh.dead() == []


# -- 2. rotation ----------------------------------------------------------------------------------

ROTATION_RUN = 120.0  # seconds of traffic with 30 s certificates: about eight rotations per workload


@pytest.mark.timeout(420)
def test_30_second_certificates_rotate_for_2_minutes_under_traffic_without_a_failed_request(
    start_mesh: MeshFactory,
) -> None:
    mesh = start_mesh(cert_ttl="30s")
    envoys = [w for w in mesh.workloads if not w.proxyless]
    inbound = {w.name: (w.pod_ip, w.service.port) for w in envoys if w.service is not None}
    agent_serials: dict[str, set[str]] = {w.name: set() for w in mesh.workloads}
    envoy_serials: dict[str, set[str]] = {w.name: set() for w in envoys}
    wire_serials: dict[str, set[str]] = {name: set() for name in inbound}
    started = time.monotonic()
    sent_before = {name: stats(mesh, name).sent for name in ("frontend", "greeter-client")}

    def record_agents() -> None:
        for w in mesh.workloads:
            certs = get_json(f"http://{w.pod_ip}:{AGENT_PORT}/debug/certs", timeout=5)
            agent_serials[w.name].update(certs["serials"])

    while time.monotonic() - started < ROTATION_RUN:
        record_agents()
        for w in envoys:
            envoy_serials[w.name] |= envoy_cert_serials(w)
        for name, (host, port) in inbound.items():
            wire_serials[name].add(presented_serial(host, port, root=mesh.root_cert))
        assert mesh.dead() == []
        assert_no_failures(mesh, "frontend", "greeter-client")
        time.sleep(2)
    # A rotation between an iteration's agent poll and its Envoy or wire checks shows the new certificate there
    # first; the agent keeps its recent serials, so one more poll records it.
    record_agents()

    for name in ("frontend", "greeter-client"):
        assert stats(mesh, name).sent - sent_before[name] > RPS * ROTATION_RUN / 2, f"{name} did not keep sending"
    assert_no_failures(mesh, "frontend", "greeter-client")
    for name, serials in agent_serials.items():
        assert len(serials) >= 5, f"{name}'s agent showed only {len(serials)} certificates: {sorted(serials)}"
    # What the agents got, their Envoys took over SDS (for new connections both ways), and the servers' sidecars
    # presented on the wire. Connections already open keep the certificate they were opened with.
    for where, seen in (("held by Envoy", envoy_serials), ("presented on the wire", wire_serials)):
        for name, serials in seen.items():
            assert serials <= agent_serials[name], f"{name}: certificates {where} that its agent never had"
            assert len(serials) >= 5, f"{name}: only {len(serials)} certificates {where}"
    counts = ", ".join(f"{n} {len(s)}" for n, s in agent_serials.items())
    print(f"\nrotation: {counts} certificates in {ROTATION_RUN:.0f} s")


# -- 3. endpoints ---------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_third_reviews_workload_gets_traffic_and_loses_it_when_its_endpoint_goes(start_mesh: MeshFactory) -> None:
    mesh = start_mesh()
    assert set(stats(mesh, "frontend").backends) <= {"v1", "v2"}
    bad_calls: list[tuple[Callable[[], object], str]] = [
        (lambda: mesh.add_workload(name="reviews-v1", role=Role.REVIEWS, version="v3"), "'reviews-v1' is taken"),
        (lambda: mesh.add_workload(name="Reviews_v3", role=Role.REVIEWS, version="v3"), "must be a DNS label"),
        (lambda: mesh.withdraw("reviews-v9"), "no workload 'reviews-v9' in the mesh"),
        (lambda: mesh.withdraw("greeter-client"), "'greeter-client' serves no Service"),
    ]
    for call, message in bad_calls:
        with pytest.raises(PlanError, match=message):
            call()

    v3 = mesh.add_workload(name="reviews-v3", role=Role.REVIEWS, version="v3")  # returns once it is published
    published_at = time.time()
    first = wait_for(functools.partial(answered_by, mesh, "frontend", "v3"), timeout=60, what="an answer from v3")
    wait_for(lambda: f"URI={FRONTEND_ID}" in stats(mesh, "reviews-v3").last_xfcc, what="v3 to see the frontend's XFCC")
    print(f"\nendpoint added: the frontend had its first answer from v3 {first.time - published_at:.1f}s later")

    withdrawn_at = time.time()
    mesh.withdraw("reviews-v3")
    # Traffic has left v3 once the frontend got 60 answers in a row from elsewhere (with v3 still among three
    # backends, that is about one chance in 10^10). `last` is the latest report in which v3's count grew.
    last = stats(mesh, "frontend")

    def left_v3() -> bool:
        nonlocal last
        now = stats(mesh, "frontend")
        if now.backends.get("v3") != last.backends.get("v3"):
            last = now
        return sum(now.backends.values()) - sum(last.backends.values()) >= 60

    wait_for(left_v3, timeout=90, what="no more answers from v3")
    print(f"endpoint removed: the frontend had its last answer from v3 {max(last.time - withdrawn_at, 0):.1f}s later")
    served_by_v3 = stats(mesh, "reviews-v3").served

    mesh.remove_workload("reviews-v3")
    v3_binds = [b for b in required_binds(mesh.plan, [v3]) if b.host in (v3.pod_ip, v3.loopback)]
    assert taken(v3_binds) == [], "the removed workload left a listener behind"
    assert processes_mentioning(str(mesh.pod_dir(v3))) == {}
    wait_for_answers(mesh, "frontend", 30)
    final = stats(mesh, "frontend")
    assert final.backends.get("v3") == last.backends.get("v3") and set(final.backends) == {"v1", "v2", "v3"}
    final_v3 = read_stats(mesh.stats_path(v3))  # what its app wrote as it stopped
    assert final_v3 is not None and final_v3.served == served_by_v3
    assert_no_failures(mesh, "frontend")
    assert "reviews-v3" not in (mesh.config_dir / "reviews.yaml").read_text()


# -- 4. control plane killed ----------------------------------------------------------------------

DOWNTIME = 10.0


@pytest.mark.timeout(300)
def test_traffic_survives_a_killed_control_plane_and_every_proxy_resyncs_after_restart(
    start_mesh: MeshFactory,
) -> None:
    mesh = start_mesh()
    frontend = workload(mesh, "frontend")
    wait_for(lambda: every_proxy_synced(mesh), timeout=60, what="every proxy SYNCED")
    serials = {w.name: get_json(f"http://{w.pod_ip}:{AGENT_PORT}/debug/certs")["serial"] for w in mesh.workloads}
    old = mesh.serve
    assert old is not None and old.proc is not None
    old_group = old.proc.pid  # serve leads its own process group, with its signing workers in it

    old.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    old.proc.wait()
    wait_for(lambda: envoy_stat(frontend, "control_plane.connected_state") == 0, what="Envoy to see xDS gone")
    answers = {name: answered(mesh, name) for name in ("frontend", "greeter-client")}
    time.sleep(max(DOWNTIME - (time.monotonic() - killed), 0))
    # Down for 10 s: the proxies kept their configuration and the agents their certificates.
    for name, before in answers.items():
        assert answered(mesh, name) > before + RPS * 2, f"{name} got no answers while the control plane was down"
    assert_no_failures(mesh, "frontend", "greeter-client")
    status = mesh.status()
    assert status.control_plane.startswith("exited"), status.control_plane
    assert {row.workload.name: row.cert.serial if row.cert else None for row in status.workloads} == serials
    wait_for(lambda: processes_in_group(old_group) == [], what="the killed control plane's signing workers to exit")

    restarted = time.monotonic()
    mesh.start_control_plane()
    ready = time.monotonic()
    synced_after: dict[str, float] = {}

    def all_synced() -> bool:
        for proxy in in_sync(mesh) - synced_after.keys():
            synced_after[proxy] = time.monotonic() - ready
        return len(synced_after) == len(mesh.workloads)

    wait_for(all_synced, timeout=150, what="every proxy SYNCED after the restart")
    each = ", ".join(f"{proxy} {after:.1f}s" for proxy, after in sorted(synced_after.items(), key=lambda i: i[1]))
    print(f"\ncontrol plane restarted: ready after {ready - restarted:.1f}s; then SYNCED: {each}")

    # What an operator runs: every demo proxy, every type SYNCED.
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "proxy-status", "--http-addr", mesh.control_plane_http],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    for w in mesh.workloads:
        assert rows[w.proxy_name][2:6] == ["SYNCED"] * 4, result.stdout
    assert envoy_stat(frontend, "control_plane.connected_state") == 1
    wait_for_answers(mesh, "frontend", 20)
    wait_for_answers(mesh, "greeter-client", 20)
    assert_no_failures(mesh, "frontend", "greeter-client")
