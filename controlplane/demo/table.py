"""Rendering the demo's view: one row per workload, as plain text or as a rich table; the final summary.

The same cells feed both renderings, so what a terminal shows live is what a log file gets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from rich.table import Table
from rich.text import Text

from controlplane.demo.plan import GREETER, REVIEWS, Role
from controlplane.demo.status import MeshStatus, WorkloadStatus
from controlplane.proxystatuscmd import TYPES
from controlplane.proxystatuscmd import table as text_table

HEADERS = (
    "WORKLOAD",
    "IDENTITY",
    "CERT SERIAL",
    "EXPIRES",
    "ROTATES",
    "XDS",
    "REQUESTS",
    "FAILED",
    "P50",
    "P99",
    "PEERS",
)
SERIAL_CHARS = 12
TARGETS = {Role.FRONTEND: REVIEWS.name, Role.GREETER_CLIENT: GREETER.name}


def relative(when: dt.datetime | None, now: dt.datetime) -> str:
    """`in 1h02m`, `in 14s`, `3s ago`; `-` when unknown."""
    if when is None:
        return "-"
    seconds = int((when - now).total_seconds())
    text = _duration(abs(seconds))
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def xds_cell(row: WorkloadStatus) -> str:
    """`SYNCED` when every subscribed type is, else each type that is not (`EDS STALE`)."""
    if not row.connected:
        return "not connected"
    if row.xds and all(status == "SYNCED" for status in row.xds.values()):
        return f"SYNCED ({len(row.xds)})"
    order = [t for t in TYPES if t in row.xds] + sorted(set(row.xds) - set(TYPES))
    return " ".join(f"{t} {row.xds[t]}" for t in order if row.xds[t] != "SYNCED") or "no types"


def _shares(counts: Mapping[str, int], *, short: bool = False) -> str:
    total = sum(counts.values())
    if not total:
        return ""
    parts = []
    for name, count in sorted(counts.items()):
        label = name.rsplit("/sa/", 1)[-1] if short else name
        parts.append(f"{label} {round(100 * count / total)}%")
    return ", ".join(parts)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def cells(row: WorkloadStatus, now: dt.datetime) -> tuple[str, ...]:
    w, cert, stats = row.workload, row.cert, row.stats
    name = w.name + (f" [{row.problem}]" if row.problem else "")
    if cert is not None:
        serial = cert.serial[:SERIAL_CHARS]
        cert_cells = (cert.identity, serial, relative(cert.not_after, now), relative(cert.next_rotation, now))
    else:
        cert_cells = (w.identity, f"({row.cert_error or 'none'})"[:40], "-", "-")
    if stats is None:
        traffic: tuple[str, ...] = ("-", "-", "-", "-", "")
    elif w.caller:
        answered = _shares(stats.backends)
        traffic = (
            f"{stats.sent} to {TARGETS.get(w.role, '?')}",
            str(stats.failed),
            _ms(stats.p50_ms),
            _ms(stats.p99_ms),
            f"answered by {answered}" if answered else "",
        )
    else:
        callers = _shares(stats.peers, short=True)
        traffic = (f"{stats.served} served", "-", "-", "-", f"called by {callers}" if callers else "")
    return (name, *cert_cells, xds_cell(row), *traffic)


def title(status: MeshStatus) -> str:
    sent, failed = status.sent, status.failed
    return f"meshplane demo: control plane {status.control_plane}; {sent} requests sent, {failed} failed"


def plain(status: MeshStatus) -> str:
    """The view as aligned plain text, with a timestamp and the totals above it."""
    body = [cells(row, status.at) for row in status.workloads]
    stamp = status.at.astimezone().strftime("%H:%M:%S")
    return f"[{stamp}] {title(status)}\n{text_table(HEADERS, body)}"


def rich_table(status: MeshStatus, *, caption: str = "") -> Table:
    """The view as a rich Table: failures and problems in red, synced xDS in green."""
    table = Table(title=title(status), caption=caption or None, caption_justify="left", expand=False)
    for header in HEADERS:
        table.add_column(header, no_wrap=header in ("WORKLOAD", "CERT SERIAL", "XDS", "FAILED"))
    for row in status.workloads:
        values = cells(row, status.at)
        styled = [Text(v) for v in values]
        if row.problem:
            styled[0].stylize("bold red")
        styled[5].stylize("green" if values[5].startswith("SYNCED") else "yellow")
        if row.stats is not None and row.stats.failed:
            styled[7].stylize("bold red")
        table.add_row(*styled)
    return table


def summary(status: MeshStatus) -> str:
    """What the callers saw over the whole run, with every failure reason, and the verdict."""
    lines = []
    for row in status.callers():
        w, stats = row.workload, row.stats
        target = TARGETS.get(w.role, "?")
        if stats is None:
            lines.append(f"{w.name} -> {target}: no counters (the app never reported)")
            continue
        answered = ", ".join(f"{k} {v}" for k, v in sorted(stats.backends.items())) or "nobody"
        lines.append(
            f"{w.name} -> {target}: {stats.sent} sent, {stats.failed} failed, p50 {_ms(stats.p50_ms)}, "
            f"p99 {_ms(stats.p99_ms)}; answered by {answered}"
        )
        lines += [f"    {count} x {reason}" for reason, count in sorted(stats.errors.items(), key=lambda e: -e[1])]
    for row in status.workloads:
        if not row.workload.caller and row.stats is not None:
            peers = ", ".join(f"{k} {v}" for k, v in sorted(row.stats.peers.items())) or "nobody"
            lines.append(f"{row.workload.name}: {row.stats.served} served; callers by certificate: {peers}")
    return "\n".join(lines)


def verdict(status: MeshStatus, *, dead: list[str]) -> tuple[int, str]:
    """(exit status, sentence): 0 only when requests were sent, none failed and no process died."""
    failing = [row for row in status.callers() if row.stats is not None and row.stats.failed]
    silent = [row.workload.name for row in status.callers() if row.stats is None or row.stats.sent == 0]
    problems = []
    if failing:
        where = ", ".join(f"{r.workload.name} {r.stats.failed}" for r in failing if r.stats)
        problems.append(f"{status.failed} of {status.sent} requests failed ({where})")
    if silent:
        problems.append(f"no requests were sent by {', '.join(silent)}")
    if dead:
        problems.append(f"exited unexpectedly: {', '.join(dead)}")
    if problems:
        return 1, "FAILED: " + "; ".join(problems)
    return 0, f"OK: {status.sent} requests, none failed"
