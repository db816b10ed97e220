"""bench/webhook: admissions per second and latency of the injection webhook over HTTPS.

Starts `meshplane serve` (local mode) pinned to one core, runs the load generator in a separate
process pinned to another core, and measures two bodies in the same run:
- `skip`: a pod with `sidecar.istio.io/inject: "false"` — parsing, policy and the HTTPS round
  trip with no injection: the floor of this transport on this machine;
- `inject`: a two-container Deployment pod (ports, probes, owner reference) that gets injected.

Usage: python -m bench.webhook [--seconds 10] [--concurrency 8] [--rounds 3]
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
from tests.helpers.serve import SERVER_NAME, start_serve


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp:
        tmp_path = pathlib.Path(tmp)
        env = {"MESHPLANE_LOG_LEVEL": "warning"}
        running = start_serve(tmp_path, "--log-level", "warning", env=env)
        try:
            if server_core is not None:
                os.sched_setaffinity(running.proc.pid, {server_core})
            rows = []
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
                rows.append([name, median(rates), median(p50s), median(p99s), a.rounds])
        finally:
            running.stop()
    ratio = results["inject"]["median_admissions_per_s"] / results["skip"]["median_admissions_per_s"]
    print(f"webhook over HTTPS; server pinned to core {server_core}, load generator to core {client_core}; "
          f"concurrency {a.concurrency}, {a.seconds:.0f}s x {a.rounds} rounds (medians)")  # fmt: skip
    print(table(["body", "admissions/s", "p50 ms", "p99 ms", "rounds"], rows))
    print(f"inject/skip throughput ratio: {ratio:.2f}")
    goal = results["inject"]["median_admissions_per_s"] >= 1000 and results["inject"]["median_p99_ms"] < 10
    print(f"goal (>= 1000 admissions/s, p99 < 10 ms on one core): {'met' if goal else 'NOT met'}")
    path = write_result(
        "webhook",
        {"server_core": server_core, "client_core": client_core, "concurrency": a.concurrency, "seconds": a.seconds,
         "rounds": a.rounds, "results": results, "inject_over_skip": ratio, "goal_met": goal},
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
