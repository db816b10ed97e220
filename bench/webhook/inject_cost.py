"""bench/webhook/inject_cost: CPU time of one `inject_pod` call, templates against the baseline, same run.

The HTTPS benchmark (`python -m bench.webhook`) measures the whole webhook; this one isolates the
injection function, in CPU time (`time.process_time`), so that a machine busy with other work
distorts it less. Each flavour runs in its own process: `templates` (this tree) and `baseline` (the
`webhook` package of `--baseline-rev`, extracted from git and put first on the import path). Three
workloads: `same-workload` (the bench pod again and again: replicas of one Deployment, served by the
render cache), `distinct-pods` (a label the templates ignore differs on every pod: rendered every
time, parsed once) and `distinct-workloads` (the `app` label, hence the canonical name, differs on
every pod: rendered and parsed every time, the worst case).

Usage: python -m bench.webhook.inject_cost [--count 3000] [--rounds 5] [--baseline-rev REV]
Prints a table and writes bench/results/webhook-inject-cost-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

from bench.common import median, table, write_result
from bench.webhook.__main__ import BASELINE_REV, _baseline_webhook, pod

_CHILD = """
import copy, json, sys, time
sys.path.insert(0, sys.argv[1]) if sys.argv[1] else None
from controlplane.injectcmd import OfflineSettings
from webhook.inject import InjectionParams, inject_pod
pod, count, label = json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = OfflineSettings()
params = InjectionParams(revision=s.revision, namespace="shop", config=s.config, discovery_address=s.discovery_address,
                         trust_domain=s.trust_domain, cluster_id=s.cluster_id)
pods = [copy.deepcopy(pod) for _ in range(count)]
for n, p in enumerate(pods):
    if label:
        p["metadata"]["labels"][label] = f"{label}-{n}"
inject_pod(copy.deepcopy(pod), params)  # warm: imports, compiled templates
start = time.process_time()
for p in pods:
    inject_pod(p, params)
print(json.dumps({"us_per_call": (time.process_time() - start) / count * 1e6}))
"""


# workload -> the label given a different value on every pod ("" for none)
WORKLOADS = {"same-workload": "", "distinct-pods": "replica", "distinct-workloads": "app"}


def _run(import_first: str, *, count: int, label: str) -> float:
    cmd = [sys.executable, "-c", _CHILD, import_first, json.dumps(pod(inject=True)), str(count), label]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return float(json.loads(out.stdout)["us_per_call"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--baseline-rev", default=BASELINE_REV)
    a = p.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-inject-") as tmp:
        baseline = str(_baseline_webhook(a.baseline_rev, pathlib.Path(tmp)))
        for _ in range(a.rounds):  # interleaved, so both flavours see the same machine
            for flavour, first in (("baseline", baseline), ("templates", "")):
                for workload, label in WORKLOADS.items():
                    cost = _run(first, count=a.count, label=label)
                    results.setdefault(flavour, {}).setdefault(workload, []).append(cost)
    rows, summary = [], {}
    for workload in WORKLOADS:
        base = median(results["baseline"][workload])
        new = median(results["templates"][workload])
        summary[workload] = {"baseline_us": base, "templates_us": new, "templates_over_baseline": new / base}
        rows.append([workload, base, new, new / base, 1e6 / new])
    print(f"inject_pod CPU time per call, median of {a.rounds} rounds x {a.count} calls (baseline {a.baseline_rev})")
    print(table(["workload", "baseline us", "templates us", "ratio", "templates calls/s/core"], rows))
    path = write_result(
        "webhook-inject-cost",
        {"count": a.count, "rounds": a.rounds, "baseline_rev": a.baseline_rev, "runs": results, "summary": summary},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
