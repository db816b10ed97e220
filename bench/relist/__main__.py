"""bench/relist: what relisting a large cluster costs `meshplane serve` in Kubernetes mode.

Runs kubesim (the API server) in this process, filled with `--pods` Pods of a realistic shape
(labels, annotations, a container with ports, env, resources and a probe; a status with IPs and
conditions) over 20 namespaces, and a Service and EndpointSlice per 10 Pods, and starts
`meshplane serve --kubeconfig` in its own process, reaching kubesim through a TCP relay. Per round,
after `--settle` quiet seconds: the relay drops every connection and refuses new ones, a Pod is
written and kubesim's history compacted, then the relay comes back, so every watch resumes into
`410 Gone` and relists everything (what an API server's compaction, or a long partition, does).
A prober process (tests/helpers/readyprobe.py) polls `/ready` every 50 ms throughout.

Reported: seconds to the first `/ready` 200, and per round the seconds until the Pods' relist was
applied (the server logs `listed pods@...`) with the server's CPU seconds meanwhile, the longest
`/ready` wait during it and how many waited over 250 ms, the longest wait in the quiet seconds
before it, and the server's RSS after it. Bound: no wait over 250 ms (the one event loop serves
the webhook, the CA, xDS and `/ready`). Prints a table, writes bench/results/relist-<time>.json
with the core count, and exits 1 when the bound is broken. kubesim serving 30,000 Pods shares the
machine's cores with the server.

Usage: python -m bench.relist [--pods 30000] [--rounds 3] [--settle 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

from bench.common import median, percentile, table, write_result
from tests.helpers.readyprobe import Prober
from tests.helpers.relay import Relay
from tests.helpers.serve import Running, start_serve
from tests.kubesim.server import KubeSim

NAMESPACES = 20
PODS_PER_SERVICE = 10
STALL_BOUND = 0.250


def pod(i: int, services: int) -> dict[str, Any]:
    """Pod `i` of a Deployment-like set: what a kubelet-reported Pod of a small app holds."""
    app = f"app{(i // PODS_PER_SERVICE) % services}"
    ip = f"10.{20 + i // 65536}.{(i // 256) % 256}.{i % 256}"
    container = {
        "name": "app",
        "image": "example/app:1.2.3",
        "ports": [{"containerPort": 8080, "name": "http"}],
        "env": [{"name": f"SETTING_{k}", "value": "x" * 20} for k in range(10)],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
    }
    conditions = ("Initialized", "Ready", "ContainersReady", "PodScheduled")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{app}-{i}",
            "namespace": f"ns{i % NAMESPACES}",
            "labels": {"app": app, "version": "v1", "pod-template-hash": "5d8f7c9b6"},
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": "2026-12-01T00:00:00Z",
                "prometheus.io/scrape": "true",
            },
        },
        "spec": {"nodeName": "node-1", "containers": [container]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": "192.168.0.1",
            "conditions": [{"type": kind, "status": "True"} for kind in conditions],
        },
    }


def fill(sim: KubeSim, pods: int) -> int:
    """Namespaces, Pods, and a Service and EndpointSlice per PODS_PER_SERVICE Pods; the number of Services."""
    services = max(1, pods // PODS_PER_SERVICE)
    for name in ["istio-system", *(f"ns{i}" for i in range(NAMESPACES))]:
        sim.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    for i in range(pods):
        sim.create_object(pod(i, services))
    for s in range(services):
        namespace, app = f"ns{(s * PODS_PER_SERVICE) % NAMESPACES}", f"app{s}"
        ports = [{"name": "http", "port": 80, "targetPort": 8080}]
        sim.create_object(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": app, "namespace": namespace},
                "spec": {"selector": {"app": app}, "ports": ports},
            }
        )
        sim.create_object(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": f"{app}-1", "namespace": namespace, "labels": {"kubernetes.io/service-name": app}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [f"10.30.{s // 250}.{s % 250 + 1}"], "conditions": {"ready": True}}],
            }
        )
    return services


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User and system CPU seconds process `pid` has used."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pod_lists(running: Running) -> int:
    """How many times the server has applied a list of the Pods (its log says `listed pods@...`)."""
    return running.logs().count("listed pods@")


async def wait_for_pod_list(running: Running, count: int, *, within: float) -> float:
    """Seconds until the server has applied its `count`-th list of the Pods; raises TimeoutError."""
    started = time.monotonic()
    while pod_lists(running) < count:
        if time.monotonic() - started > within:
            raise TimeoutError(f"the Pods were not relisted within {within:.0f} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def waits_between(polls: list[tuple[float, float, Any]], start: float, end: float) -> list[float]:
    return [waited for at, waited, _ in polls if start <= at < end]


async def run(a: argparse.Namespace, tmp: pathlib.Path) -> dict[str, Any]:
    sim = KubeSim(window=1000, bookmark_interval=1.0)
    await sim.start()
    relay = Relay(target_port=sim.port)
    await relay.start()
    running: Running | None = None
    prober: Prober | None = None
    try:
        filled = time.monotonic()
        services = fill(sim, a.pods)
        filled_s = time.monotonic() - filled
        kubeconfig = sim.write_kubeconfig(tmp / "kubeconfig", server=f"http://127.0.0.1:{relay.port}")
        started = time.monotonic()
        running = await asyncio.to_thread(
            start_serve, tmp, "--kubeconfig", str(kubeconfig), "--ca-workers", "0", ready_timeout=600
        )
        ready_s = time.monotonic() - started
        ready_cpu_s = cpu_s(running.proc.pid)
        prober = await asyncio.to_thread(Prober, running)
        rounds: list[dict[str, Any]] = []
        windows: list[tuple[float, float, float]] = []  # quiet start, relist start, relist end (wall)
        for index in range(a.rounds):
            quiet = time.time()
            await asyncio.sleep(a.settle)
            lists, cpu_before = pod_lists(running), cpu_s(running.proc.pid)
            began = time.time()
            relay.down()
            sim.create_object(pod(a.pods + index, services))
            sim.compact()
            relay.up()
            relist_s = await wait_for_pod_list(running, lists + 1, within=600)
            windows.append((quiet, began, time.time()))
            cpu = cpu_s(running.proc.pid) - cpu_before
            rounds.append({"relist_s": relist_s, "server_cpu_s": cpu, "rss_mib": rss_mib(running.proc.pid)})
        polls = await asyncio.to_thread(prober.finish)
        for found, (quiet, began, ended) in zip(rounds, windows, strict=True):
            during, before = waits_between(polls, began, ended), waits_between(polls, quiet, began)
            found["max_wait_ms"] = 1000 * max(during, default=0.0)
            found["p99_wait_ms"] = 1000 * percentile(during, 99)
            found["waits_over_bound"] = sum(w > STALL_BOUND for w in during)
            found["polls"] = len(during)
            found["quiet_max_wait_ms"] = 1000 * max(before, default=0.0)
        failed = sum(1 for _, _, status in polls if status != 200)
        return {
            "params": {"pods": a.pods, "services": services, "rounds": a.rounds, "settle": a.settle},
            "fill_s": filled_s,
            "first_ready_s": ready_s,
            "first_ready_server_cpu_s": ready_cpu_s,
            "rounds": rounds,
            "polls_not_200": failed,
        }
    finally:
        if prober is not None:
            prober.kill()
        if running is not None:
            await asyncio.to_thread(running.stop)
        await relay.close()
        await sim.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=30_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--settle", type=float, default=5.0, help="quiet seconds before each relist")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-relist-") as tmp:
        result = asyncio.run(run(a, pathlib.Path(tmp)))
    rounds = result["rounds"]
    print(
        f"{a.pods} Pods, {result['params']['services']} Services: first /ready after {result['first_ready_s']:.1f} s"
        f" (server CPU {result['first_ready_server_cpu_s']:.1f} s)"
    )
    print(
        table(
            [
                "round",
                "relist s",
                "server CPU s",
                "max wait ms",
                "p99 ms",
                f"waits > {STALL_BOUND * 1000:.0f} ms",
                "quiet max ms",
                "RSS MiB",
            ],
            [
                [
                    i + 1,
                    r["relist_s"],
                    r["server_cpu_s"],
                    r["max_wait_ms"],
                    r["p99_wait_ms"],
                    r["waits_over_bound"],
                    r["quiet_max_wait_ms"],
                    r["rss_mib"],
                ]
                for i, r in enumerate(rounds)
            ],
        )
    )
    result["median_max_wait_ms"] = median([r["max_wait_ms"] for r in rounds])
    result["median_relist_s"] = median([r["relist_s"] for r in rounds])
    path = write_result("relist", result)
    print(f"median of the rounds' longest waits {result['median_max_wait_ms']:.0f} ms; wrote {path}")
    broken = any(r["waits_over_bound"] for r in rounds) or result["polls_not_200"]
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
