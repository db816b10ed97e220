"""bench/cluster: how fast pods get through admission and injection to `2/2`, on the one-machine cluster.

Starts `python -m tests.kubesim cluster` (API server, controllers, kube-proxy, a kubelet running pods
in network namespaces; needs root) as a child process, installs one meshplane revision with the
pinned helm, and drives everything with the machine's kubectl, as an operator would. Per round:

- baseline: a Deployment in a namespace without injection scaled 0 -> N; time until N pods are Ready
  (`1/1`: the stand-in app, its readiness probe passed);
- meshed: the same Deployment in a namespace labelled `istio.io/rev=<rev>`, scaled 0 -> N; time until
  N pods are Ready `2/2` (admission calls meshplane's webhook, `istio-init` runs iptables, the agent
  gets its certificate from the CA and Envoy its configuration; the kubelet probes readiness through
  the agent), then every pod checked for the revision's sidecar;
- restart: `kubectl rollout restart` of the meshed Deployment; time until `rollout status` says done
  (every pod replaced and `2/2`, maxSurge/maxUnavailable 25%).

Reported: seconds and pods/s per phase (medians over rounds), meshed/baseline ratio. The load
generator is kubectl (a separate process); the cluster is another process, sharing the machine's cores.

Usage: python -m bench.cluster [--pods 50] [--rounds 2]
Prints a table and writes bench/results/cluster-<time>.json. Exits 1 when a phase did not finish.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from bench.common import median, table, write_result

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
REVISION = "bench"
TIMEOUT = 900.0

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: app, namespace: {namespace}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: app}}}}
  template:
    metadata: {{labels: {{app: app}}}}
    spec:
      containers:
      - name: app
        image: example.com/bench/app:1.0
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /ready, port: 8080}}, periodSeconds: 1}}
"""


class Cluster:
    """The cluster child process and a kubectl/helm pointed at it."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig"
        self.log = (workdir / "cluster.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.kubesim", "cluster", "--kubeconfig-out", str(self.kubeconfig),
             "--state-dir", str(workdir / "state")],
            cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "cluster ready" not in line:
            self.stop()
            raise SystemExit(f"bench/cluster: the cluster did not start; see {workdir / 'cluster.log'}")

    def run(self, *args: str, stdin: str | None = None, timeout: float = TIMEOUT) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.workdir)}
        result = subprocess.run(
            args, input=stdin, capture_output=True, text=True, timeout=timeout, env=env, check=False, cwd=REPO
        )
        if result.returncode != 0:
            raise SystemExit(f"bench/cluster: {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = TIMEOUT) -> str:
        return self.run("kubectl", *args, stdin=stdin, timeout=timeout)

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
        return items

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def wait_ready(cluster: Cluster, namespace: str, count: int) -> float:
    """Seconds until exactly `count` pods of the namespace are Ready; SystemExit on the timeout."""
    start = time.monotonic()
    while time.monotonic() - start < TIMEOUT:
        pods = cluster.pods(namespace)
        if len(pods) == count and all(ready(p) for p in pods):
            return time.monotonic() - start
        time.sleep(0.5)
    raise SystemExit(f"bench/cluster: {namespace} did not reach {count} ready pods within {TIMEOUT:.0f}s")


def wait_gone(cluster: Cluster, namespace: str) -> None:
    start = time.monotonic()
    while cluster.pods(namespace):
        if time.monotonic() - start > TIMEOUT:
            raise SystemExit(f"bench/cluster: the pods of {namespace} were not deleted within {TIMEOUT:.0f}s")
        time.sleep(0.5)


def scale(cluster: Cluster, namespace: str, replicas: int) -> float:
    cluster.kubectl("-n", namespace, "scale", "deployment/app", f"--replicas={replicas}")
    if replicas == 0:
        wait_gone(cluster, namespace)
        return 0.0
    return wait_ready(cluster, namespace, replicas)


def check_meshed(cluster: Cluster, namespace: str) -> None:
    for pod in cluster.pods(namespace):
        status = json.loads(pod["metadata"].get("annotations", {}).get("sidecar.istio.io/status", "{}"))
        statuses = pod["status"].get("containerStatuses", []) + pod["status"].get("initContainerStatuses", [])
        proxy = [s for s in statuses if s["name"] == "istio-proxy"]
        if status.get("revision") != REVISION or not proxy or not proxy[0].get("ready"):
            raise SystemExit(f"bench/cluster: pod {pod['metadata']['name']} has no ready {REVISION} sidecar")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=50, help="pods per scale-up [default 50]")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; medians are reported [default 2]")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.rounds < 1:
        parser.error("--pods and --rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/cluster: needs root (the cluster runs pods in network namespaces)")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        cluster = Cluster(pathlib.Path(tmp))
        try:
            cluster.kubectl("create", "namespace", "istio-system")
            cluster.run(str(BIN / "helm"), "install", f"istiod-{REVISION}", "charts/istiod", "-n", "istio-system",
                        "--set", f"revision={REVISION}")  # fmt: skip
            cluster.kubectl("-n", "istio-system", "rollout", "status", f"deployment/istiod-{REVISION}")
            for namespace, labels in (("plain", []), ("meshed", [f"istio.io/rev={REVISION}"])):
                cluster.kubectl("create", "namespace", namespace)
                if labels:
                    cluster.kubectl("label", "namespace", namespace, *labels)
                cluster.kubectl("apply", "-f", "-", stdin=DEPLOYMENT.format(namespace=namespace))
            rounds: list[dict[str, float]] = []
            for number in range(1, args.rounds + 1):
                plain = scale(cluster, "plain", args.pods)
                scale(cluster, "plain", 0)
                meshed = scale(cluster, "meshed", args.pods)
                check_meshed(cluster, "meshed")
                start = time.monotonic()
                cluster.kubectl("-n", "meshed", "rollout", "restart", "deployment/app")
                cluster.kubectl("-n", "meshed", "rollout", "status", "deployment/app", f"--timeout={TIMEOUT:.0f}s")
                wait_ready(cluster, "meshed", args.pods)
                restart = time.monotonic() - start
                check_meshed(cluster, "meshed")
                scale(cluster, "meshed", 0)
                rounds.append({"baseline_s": plain, "meshed_s": meshed, "restart_s": restart})
                print(
                    f"round {number}: baseline {plain:.1f}s, meshed {meshed:.1f}s, restart {restart:.1f}s", flush=True
                )
        finally:
            cluster.stop()
    med = {key: median([r[key] for r in rounds]) for key in rounds[0]}
    phases = (
        ("baseline: scale 0 -> N, 1/1 Ready (no injection)", "baseline_s"),
        ("meshed: scale 0 -> N, 2/2 Ready (webhook, CA, xDS)", "meshed_s"),
        ("meshed: rollout restart -> all 2/2", "restart_s"),
    )
    rows = [(name, args.pods, med[key], args.pods / med[key]) for name, key in phases]
    print(table(("phase", "pods", "seconds (median)", "pods/s"), rows))
    ratio = med["meshed_s"] / med["baseline_s"]
    print(f"meshed/baseline time: {ratio:.2f}x over {args.rounds} round(s) on {os.cpu_count()} cores")
    path = write_result(
        "cluster",
        {"pods": args.pods, "rounds": rounds, "median": med, "meshed_over_baseline": ratio},
    )
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
