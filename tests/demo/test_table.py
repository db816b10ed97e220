"""What the demo prints: the plain-text table, the summary and the verdict."""

from __future__ import annotations

import datetime as dt
import io

from rich.console import Console

from controlplane.demo.plan import AddressPlan, workloads
from controlplane.demo.stats import AppStats
from controlplane.demo.status import CertInfo, MeshStatus, WorkloadStatus, syncz_by_proxy
from controlplane.demo.table import HEADERS, plain, rich_table, summary, verdict

NOW = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
DEMO = {w.name: w for w in workloads(AddressPlan())}
SYNCED = {"CDS": "SYNCED", "LDS": "SYNCED", "EDS": "SYNCED", "RDS": "SYNCED"}
FRONTEND_ID = "spiffe://cluster.local/ns/demo/sa/frontend"


def cert(serial: str, *, expires_in: int, rotates_in: int) -> CertInfo:
    return CertInfo(
        identity="spiffe://cluster.local/ns/demo/sa/x",
        serial=serial,
        not_after=NOW + dt.timedelta(seconds=expires_in),
        next_rotation=NOW + dt.timedelta(seconds=rotates_in),
        rotations=1,
    )


def stats(**kw: object) -> AppStats:
    return AppStats(role="r", workload="w", time=0.0, **kw)  # type: ignore[arg-type]


def mesh() -> MeshStatus:
    return MeshStatus(
        at=NOW,
        control_plane="ready",
        workloads=(
            WorkloadStatus(
                workload=DEMO["frontend"],
                cert=cert("0a1b2c3d4e5f60718293", expires_in=86399, rotates_in=3725),
                xds=SYNCED,
                connected=True,
                stats=stats(
                    sent=200,
                    failed=3,
                    backends={"v1": 99, "v2": 98},
                    errors={"HTTP 503: no healthy upstream": 3},
                    p50_ms=2.25,
                    p99_ms=9.0,
                ),
            ),
            WorkloadStatus(
                workload=DEMO["reviews-v1"],
                cert=cert("ffee", expires_in=14, rotates_in=-3),
                xds={**SYNCED, "EDS": "STALE"},
                connected=True,
                stats=stats(served=99, peers={FRONTEND_ID: 99}),
            ),
            WorkloadStatus(
                workload=DEMO["greeter-client"],
                cert_error="connection refused",
                problem="agent exited 1",
            ),
        ),
    )


def test_plain_table_has_one_row_per_workload_with_what_a_user_looks_for() -> None:
    text = plain(mesh())
    lines = text.splitlines()
    assert lines[0].endswith("meshplane demo: control plane ready; 200 requests sent, 3 failed")
    assert lines[1].split()[:3] == ["WORKLOAD", "IDENTITY", "CERT"]
    frontend, reviews, client = lines[2:]
    assert frontend.split() == [
        "frontend", "spiffe://cluster.local/ns/demo/sa/x", "0a1b2c3d4e5f", "in", "23h59m", "in", "1h02m",
        "SYNCED", "(4)", "200", "to", "reviews", "3", "2.2ms", "9.0ms", "answered", "by", "v1", "50%,", "v2", "50%",
    ]  # fmt: skip
    assert reviews.split() == [
        "reviews-v1", "spiffe://cluster.local/ns/demo/sa/x", "ffee", "in", "14s", "3s", "ago",
        "EDS", "STALE", "99", "served", "-", "-", "-", "called", "by", "frontend", "100%",
    ]  # fmt: skip
    assert client.startswith("greeter-client [agent exited 1]")
    assert "spiffe://cluster.local/ns/demo/sa/greeter-client" in client and "(connection refused)" in client
    assert "not connected" in client


def test_rich_table_renders_the_same_cells() -> None:
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(rich_table(mesh(), caption="config dir: /x"))
    rendered = out.getvalue()
    for needle in (*HEADERS, "0a1b2c3d4e5f", "EDS STALE", "answered by v1 50%, v2 50%", "config dir: /x"):
        assert needle in rendered


def test_summary_lists_every_failure_reason_and_who_called_by_certificate() -> None:
    lines = summary(mesh()).splitlines()
    assert lines[0] == "frontend -> reviews: 200 sent, 3 failed, p50 2.2ms, p99 9.0ms; answered by v1 99, v2 98"
    assert lines[1] == "    3 x HTTP 503: no healthy upstream"
    assert lines[2] == "greeter-client -> greeter: no counters (the app never reported)"
    assert lines[3] == f"reviews-v1: 99 served; callers by certificate: {FRONTEND_ID} 99"


def test_verdict_fails_on_failed_requests_silent_callers_and_dead_processes() -> None:
    code, sentence = verdict(mesh(), dead=["frontend agent (status 1, log /x)"])
    assert code == 1
    assert sentence == (
        "FAILED: 3 of 200 requests failed (frontend 3); no requests were sent by greeter-client; "
        "exited unexpectedly: frontend agent (status 1, log /x)"
    )


def test_verdict_passes_when_every_caller_sent_and_nothing_failed() -> None:
    healthy = MeshStatus(
        at=NOW,
        control_plane="ready",
        workloads=tuple(
            WorkloadStatus(workload=w, stats=stats(sent=10, backends={"v1": 10})) for w in DEMO.values() if w.caller
        ),
    )
    assert verdict(healthy, dead=[]) == (0, "OK: 20 requests, none failed")


def test_syncz_is_read_per_proxy_and_the_newest_connection_wins() -> None:
    syncz = [
        {"proxy": "frontend.demo", "connected_at": 1777636805.5, "types": {"CDS": {"status": "SYNCED"}}},
        {"proxy": "frontend.demo", "connected_at": 1777636801.0, "types": {"CDS": {"status": "STALE"}}},
        {"proxy": "greeter.demo", "connected_at": 1777636802.0, "types": {"LDS": {"status": "NACKED"}}},
    ]
    assert syncz_by_proxy(syncz) == {"frontend.demo": {"CDS": "SYNCED"}, "greeter.demo": {"LDS": "NACKED"}}
