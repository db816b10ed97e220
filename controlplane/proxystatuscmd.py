"""`meshplane proxy-status`: which proxies are connected and whether each has what it was sent.

Reads `/debug/syncz` from a running `meshplane serve` (`--http-addr`, default 127.0.0.1:8080) and
prints Istio's columns. Per type the status is SYNCED (the last response was ACKed), NOT SENT,
STALE (sent, not yet ACKed) or NACKED (rejected; `proxy-status <name>` shows the error).
Exit status: 0, or 1 when the server cannot be reached or the named proxy is not connected.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

TYPES = ("CDS", "LDS", "EDS", "RDS")
HEADERS = ("NAME", "CLUSTER", *TYPES, "ISTIOD", "VERSION", "SUBSCRIBED TYPES")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "proxy-status",
        help="show the xDS sync status of connected proxies",
        description="Show, per connected proxy and per xDS type, whether it ACKed what it was last sent.",
    )
    p.add_argument("name", nargs="?", help="a proxy (<pod>.<namespace>) to show in detail")
    default = os.environ.get("MESHPLANE_HTTP_ADDR", "127.0.0.1:8080")
    p.add_argument(
        "--http-addr",
        default=default,
        help=f"debug address of meshplane serve [env MESHPLANE_HTTP_ADDR; default {default!r}]",
    )
    p.set_defaults(func=run)


def _status(entry: dict[str, Any], short: str) -> str:
    found = entry["types"].get(short)
    return str(found["status"]) if found else "NOT SENT"


def rows(syncz: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    out = []
    for entry in sorted(syncz, key=lambda e: e["proxy"]):
        subscribed = list(entry["types"])
        out.append(
            (
                entry["proxy"],
                entry.get("cluster_id") or "",
                *(_status(entry, t) for t in TYPES),
                entry.get("istiod") or "",
                entry.get("istio_version") or "",
                f"{len(subscribed)} ({','.join(subscribed)})",
            )
        )
    return out


def table(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [headers, *body]) for i in range(len(headers))]
    lines = [
        "   ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *body]
    ]
    return "\n".join(lines)


def detail(entry: dict[str, Any]) -> str:
    lines = [
        f"Proxy:      {entry['proxy']} ({entry['id']})",
        f"Connection: {entry['connection']} from {entry['peer']}{' (delta)' if entry.get('delta') else ''}",
        f"Generator:  {entry.get('generator')}, interception {entry.get('interception_mode')}",
        f"Istiod:     {entry.get('istiod')}",
    ]
    for short, state in entry["types"].items():
        line = (
            f"  {short}: {state['status']} (sent {state['version_sent'] or '-'}, acked {state['version_acked'] or '-'})"
        )
        if state.get("error"):
            line += f" error: {state['error']}"
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    url = f"http://{args.http_addr}/debug/syncz"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            syncz = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"meshplane proxy-status: cannot read {url}: {reason}", file=sys.stderr)
        return 1
    if args.name:
        found = [e for e in syncz if args.name in (e["proxy"], e["id"])]
        if not found:
            print(f"meshplane proxy-status: proxy {args.name!r} is not connected", file=sys.stderr)
            return 1
        print("\n\n".join(detail(e) for e in found))
        return 0
    print(table(HEADERS, rows(syncz)))
    return 0
