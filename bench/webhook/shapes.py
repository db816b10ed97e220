"""bench/webhook/shapes: what one review costs the event loop, by the shape of the pod, at the offload size.

The webhook reviews a body on the event loop when its cost, counted as its bytes plus the bytes an
injection adds (`Injector.injection_bytes`, weighed once on a one-container sample pod), is at most
`webhook.app.OFFLOAD_BYTES`; such reviews start at most `INLINE_BYTES_PER_TURN` counted bytes per
turn of the loop. Both bounds assume that time follows counted bytes whatever the pod holds. This
measures that assumption: for each shape, a pod grown until its review costs just under the offload
size (the largest review the loop still does itself), reviewed `--count` times (`webhook.review`,
CPU time), reporting microseconds per counted byte, the time of that review, and the time a turn's
budget of such reviews takes.

Shapes: many env vars; many containers, each with a port and three HTTP probes (every probe is
rewritten to the agent); many containers without probes; many ports on one container; many init
containers; many volumes, each mounted.

Usage: python -m bench.webhook.shapes [--count 20] [--rounds 3]
Prints a table and writes bench/results/webhook-shapes-<time>.json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from bench.common import machine, median, table, write_result
from tests.helpers.injector import default_injector
from tests.helpers.serve import admission_review
from webhook.app import INLINE_BYTES_PER_TURN, OFFLOAD_BYTES
from webhook.review import review

Pod = dict[str, Any]


def _pod(spec: dict[str, Any]) -> Pod:
    return {"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}


def _probe(port: int) -> dict[str, Any]:
    return {"httpGet": {"path": "/healthz", "port": port}}


def _containers(n: int, *, probes: bool) -> Pod:
    containers = []
    for i in range(n):
        container: dict[str, Any] = {"name": f"c{i}", "image": "app", "ports": [{"containerPort": 8000 + i}]}
        if probes:
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                container[kind] = _probe(8000 + i)
        containers.append(container)
    return _pod({"containers": containers})


SHAPES: dict[str, Callable[[int], Pod]] = {
    "env vars": lambda n: _pod(
        {"containers": [{"name": "a", "image": "app", "env": [{"name": f"E{i}", "value": "v"} for i in range(n)]}]}
    ),
    "containers, 3 probes each": lambda n: _containers(n, probes=True),
    "containers": lambda n: _containers(n, probes=False),
    "ports": lambda n: _pod(
        {"containers": [{"name": "a", "image": "app", "ports": [{"containerPort": 1000 + i} for i in range(n)]}]}
    ),
    "init containers": lambda n: _pod(
        {
            "initContainers": [{"name": f"i{i}", "image": "init"} for i in range(n)],
            "containers": [{"name": "a", "image": "app"}],
        }
    ),
    "volumes, each mounted": lambda n: _pod(
        {
            "volumes": [{"name": f"v{i}", "emptyDir": {}} for i in range(n)],
            "containers": [
                {
                    "name": "a",
                    "image": "app",
                    "volumeMounts": [{"name": f"v{i}", "mountPath": f"/v{i}"} for i in range(n)],
                }
            ],
        }
    ),
}


def largest_inline(make: Callable[[int], Pod], budget: int) -> tuple[int, bytes]:
    """The largest n whose review body is at most `budget` bytes, and that body."""
    low, high = 1, 2
    while len(admission_review(make(high), namespace="shop")) <= budget:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if len(admission_review(make(middle), namespace="shop")) <= budget:
            low = middle
        else:
            high = middle
    return low, admission_review(make(low), namespace="shop")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=20, help="reviews per shape and round")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    injector = default_injector()  # no ConfigMaps: Istio's templates and mesh config
    weight = injector.injection_bytes()
    bodies = {name: largest_inline(make, OFFLOAD_BYTES - weight) for name, make in SHAPES.items()}
    times: dict[str, list[float]] = {name: [] for name in SHAPES}
    for _ in range(a.rounds):  # interleaved, so every shape sees the same machine
        for name, (_, body) in bodies.items():
            outcome = review(body, injector=injector)  # warm: compiled templates, render cache
            if outcome.result != "success" or "patch" not in outcome.body.get("response", {}):
                raise SystemExit(f"{name}: the review did not inject ({outcome.result}, {outcome.reason})")
            start = time.process_time()
            for _ in range(a.count):
                review(body, injector=injector)
            times[name].append((time.process_time() - start) / a.count)
    rows, summary = [], {}
    for name, (n, body) in bodies.items():
        seconds = median(times[name])
        counted = len(body) + weight
        per_byte = seconds / counted * 1e6
        summary[name] = {
            "items": n,
            "body_bytes": len(body),
            "counted_bytes": counted,
            "review_ms": seconds * 1e3,
            "us_per_counted_byte": per_byte,
            "turn_budget_ms": per_byte * INLINE_BYTES_PER_TURN / 1e3,
        }
        rows.append([name, n, len(body), seconds * 1e3, per_byte, per_byte * INLINE_BYTES_PER_TURN / 1e3])
    print(
        f"one review just under the offload size ({OFFLOAD_BYTES} counted bytes; an injection adds {weight}), "
        f"CPU time, median of {a.rounds} rounds x {a.count}"
    )
    print(
        table(
            ["shape", "items", "body bytes", "review ms", "us/counted byte", f"{INLINE_BYTES_PER_TURN} B turn ms"], rows
        )
    )
    path = write_result(
        "webhook-shapes",
        {
            "machine": machine(),
            "count": a.count,
            "rounds": a.rounds,
            "offload_bytes": OFFLOAD_BYTES,
            "inline_bytes_per_turn": INLINE_BYTES_PER_TURN,
            "injection_bytes": weight,
            "runs": times,
            "summary": summary,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
