"""bench/webhook: admissions per second and latency of the injection webhook over HTTPS.

Starts `meshplane serve` (local mode) pinned to one core, runs the load generator in a separate
process pinned to another core, and measures two bodies:
- `skip`: a pod with `sidecar.istio.io/inject: "false"` — parsing, policy and the HTTPS round
  trip with no injection: the floor of this transport on this machine;
- `inject`: a two-container Deployment pod (ports, probes, owner reference) that gets injected.

Both are measured for two servers in the same run: `templates` (this tree: injection templates
rendered with Jinja2) and `baseline`, the same server with the `webhook` package of `--baseline-rev`
(default: the last commit whose injection was built in Python code), taken from git into a
temporary directory and put first on the server's import path. `--no-baseline` skips it.

Usage: python -m bench.webhook [--seconds 10] [--concurrency 8] [--rounds 3] [--baseline-rev REV]
Prints a table and writes bench/results/webhook-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

from bench.common import median, percentile, table, write_result
from tests.helpers import serve
from tests.helpers.serve import SERVER_NAME, start_serve

REPO = pathlib.Path(__file__).resolve().parents[2]
BASELINE_REV = "c2834a7"  # injection built in Python code, before templates became data


def pod(*, inject: bool) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5}
    annotations = {} if inject else {"sidecar.istio.io/inject": "false"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7c9d8b5f4-",
            "namespace": "shop",
            "labels": {"app": "web", "version": "v1", "pod-template-hash": "7c9d8b5f4"},
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-7c9d8b5f4",
                    "uid": "u1",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "serviceAccountName": "web",
            "containers": [
                {
                    "name": "web",
                    "image": "shop/web:1.4",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": probe,
                    "livenessProbe": {"tcpSocket": {"port": 8080}},
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                },
                {
                    "name": "cache",
                    "image": "redis:7",
                    "ports": [{"name": "redis", "containerPort": 6379}],
                },
            ],
        },
    }


def review(*, inject: bool) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "bench",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "object": pod(inject=inject),
            },
        }
    ).encode()


def _loadgen(
    running: Any, body_file: pathlib.Path, *, seconds: float, concurrency: int, core: int | None
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.webhook.loadgen", "--url", running.webhook_url, "--body", str(body_file),
        "--cafile", str(running.root_cert), "--server-name", SERVER_NAME,
        "--concurrency", str(concurrency), "--seconds", str(seconds),
    ]  # fmt: skip
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    out = subprocess.run(cmd, check=False, capture_output=True, timeout=seconds * 4 + 60)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed ({out.returncode}):\n{out.stderr.decode(errors='replace')}")
    return dict(json.loads(out.stdout))


def _baseline_webhook(rev: str, into: pathlib.Path) -> pathlib.Path:
    """The `webhook` package of commit `rev`, extracted into `into`; returns the directory to import from."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "webhook"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _start(tmp_path: pathlib.Path, *, import_first: pathlib.Path | None) -> Any:
    """`meshplane serve`; with `import_first`, its packages shadow this tree's (the baseline)."""
    env = {"MESHPLANE_LOG_LEVEL": "warning"}
    if import_first is None:
        return start_serve(tmp_path, "--log-level", "warning", env=env)
    boot = (
        f"import sys, runpy; sys.path.insert(0, {str(import_first)!r}); "
        "runpy.run_module('controlplane', run_name='__main__')"
    )
    original = serve.meshplane_cmd
    serve.meshplane_cmd = lambda: [sys.executable, "-c", boot]  # type: ignore[assignment]
    try:
        return start_serve(tmp_path, "--log-level", "warning", env=env)
    finally:
        serve.meshplane_cmd = original  # type: ignore[assignment]


def _measure(running: Any, tmp_path: pathlib.Path, a: argparse.Namespace, cores: tuple[Any, Any]) -> dict[str, Any]:
    server_core, client_core = cores
    if server_core is not None:
        os.sched_setaffinity(running.proc.pid, {server_core})
    results: dict[str, Any] = {}
    for name, inject in (("skip", False), ("inject", True)):
        body_file = tmp_path / f"{name}.json"
        body_file.write_bytes(review(inject=inject))
        rates, p50s, p99s = [], [], []
        for _ in range(a.rounds):
            r = _loadgen(running, body_file, seconds=a.seconds, concurrency=a.concurrency, core=client_core)
            if r["error_count"]:
                raise SystemExit(f"{name}: {r['error_count']} errors, e.g. {r['errors']}")
            lat = r["latencies"]
            rates.append(len(lat) / r["elapsed"])
            p50s.append(percentile(lat, 50) * 1000)
            p99s.append(percentile(lat, 99) * 1000)
        results[name] = {
            "admissions_per_s": rates, "p50_ms": p50s, "p99_ms": p99s,
            "median_admissions_per_s": median(rates),
            "median_p50_ms": median(p50s),
            "median_p99_ms": median(p99s),
        }  # fmt: skip
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline-rev", default=BASELINE_REV, help=f"git commit of the baseline webhook [{BASELINE_REV}]")
    p.add_argument("--no-baseline", action="store_true", help="measure this tree only")
    a = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    servers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp:
        tmp_path = pathlib.Path(tmp)
        flavours: list[tuple[str, pathlib.Path | None]] = [("templates", None)]
        if not a.no_baseline:
            (tmp_path / "baseline-src").mkdir()
            flavours.insert(0, ("baseline", _baseline_webhook(a.baseline_rev, tmp_path / "baseline-src")))
        for flavour, import_first in flavours:
            (tmp_path / flavour).mkdir()
            running = _start(tmp_path / flavour, import_first=import_first)
            try:
                servers[flavour] = _measure(running, tmp_path / flavour, a, (server_core, client_core))
            finally:
                running.stop()
    rows = [
        [
            flavour,
            body,
            r[body]["median_admissions_per_s"],
            r[body]["median_p50_ms"],
            r[body]["median_p99_ms"],
            a.rounds,
        ]
        for flavour, r in servers.items()
        for body in ("skip", "inject")
    ]
    current = servers["templates"]
    ratio = current["inject"]["median_admissions_per_s"] / current["skip"]["median_admissions_per_s"]
    print(f"webhook over HTTPS; server pinned to core {server_core}, load generator to core {client_core}; "
          f"concurrency {a.concurrency}, {a.seconds:.0f}s x {a.rounds} rounds (medians)")  # fmt: skip
    print(table(["server", "body", "admissions/s", "p50 ms", "p99 ms", "rounds"], rows))
    print(f"inject/skip throughput ratio (templates): {ratio:.2f}")
    over_baseline = None
    if "baseline" in servers:
        base = servers["baseline"]["inject"]["median_admissions_per_s"]
        over_baseline = current["inject"]["median_admissions_per_s"] / base
        print(f"templates/baseline inject throughput ratio: {over_baseline:.2f} (baseline {a.baseline_rev})")
    goal = current["inject"]["median_admissions_per_s"] >= 1000 and current["inject"]["median_p99_ms"] < 10
    print(f"goal (>= 1000 admissions/s, p99 < 10 ms on one core): {'met' if goal else 'NOT met'}")
    path = write_result(
        "webhook",
        {"server_core": server_core, "client_core": client_core, "concurrency": a.concurrency, "seconds": a.seconds,
         "rounds": a.rounds, "baseline_rev": None if a.no_baseline else a.baseline_rev, "servers": servers,
         "results": current, "inject_over_skip": ratio, "templates_over_baseline": over_baseline, "goal_met": goal},
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
