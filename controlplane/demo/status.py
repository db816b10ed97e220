"""A point-in-time view of the demo mesh, gathered over the wire.

Per workload: its certificate (the agent's `GET http://<pod ip>:15020/debug/certs`), its proxy's
xDS sync state (the control plane's `/debug/syncz`, as `meshplane proxy-status` reads it) and its
app's counters (the app's stats file). Anything unreachable is reported as such in the view; no
error escapes `collect`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pathlib
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.demo.plan import AGENT_PORT, Workload
from controlplane.demo.stats import AppStats, read_stats

HTTP_TIMEOUT = 1.0


def get_json(url: str, *, timeout: float = HTTP_TIMEOUT) -> Any:
    """GET a JSON document. Raises OSError (including URLError) or ValueError."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def http_ok(url: str, *, timeout: float = HTTP_TIMEOUT) -> bool:
    """Whether `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def _when(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, kw_only=True)
class CertInfo:
    identity: str
    serial: str
    not_after: dt.datetime | None
    next_rotation: dt.datetime | None
    rotations: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CertInfo:
        """Parse the agent's /debug/certs. Raises ValueError when it has no certificate yet."""
        if not data.get("serial"):
            raise ValueError("no certificate yet")
        return cls(
            identity=str(data.get("identity") or ""),
            serial=str(data["serial"]),
            not_after=_when(data.get("not_after")),
            next_rotation=_when(data.get("next_rotation")),
            rotations=int(data.get("rotations") or 0),
        )


@dataclass(frozen=True, kw_only=True)
class WorkloadStatus:
    workload: Workload
    cert: CertInfo | None = None
    cert_error: str = ""
    xds: Mapping[str, str] = field(default_factory=dict)  # type (CDS, LDS, ...) -> SYNCED / STALE / ...
    connected: bool = False  # whether the control plane sees its xDS stream
    stats: AppStats | None = None
    problem: str = ""  # a process of the workload is not running as it should


@dataclass(frozen=True, kw_only=True)
class MeshStatus:
    at: dt.datetime
    control_plane: str  # "ready", or what is wrong with it
    workloads: tuple[WorkloadStatus, ...]

    def callers(self) -> list[WorkloadStatus]:
        return [w for w in self.workloads if w.workload.caller]

    def with_stats(self, stats: Mapping[str, AppStats | None]) -> MeshStatus:
        """The same view with newer app counters (workload name -> stats; missing names keep theirs)."""
        rows = tuple(
            dataclasses.replace(row, stats=stats[row.workload.name]) if row.workload.name in stats else row
            for row in self.workloads
        )
        return dataclasses.replace(self, workloads=rows)

    @property
    def sent(self) -> int:
        return sum(w.stats.sent for w in self.callers() if w.stats)

    @property
    def failed(self) -> int:
        return sum(w.stats.failed for w in self.callers() if w.stats)


def syncz_by_proxy(syncz: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Proxy name -> {type: status}, from /debug/syncz (the newest connection wins)."""
    out: dict[str, dict[str, str]] = {}
    for entry in sorted(syncz, key=lambda e: float(e.get("connected_at") or 0)):
        types = entry.get("types") or {}
        out[str(entry.get("proxy"))] = {str(t): str(state.get("status")) for t, state in types.items()}
    return out


def collect(
    *,
    control_plane_http: str,
    workloads: Sequence[Workload],
    stats_paths: Mapping[str, pathlib.Path],
    problems: Mapping[str, str] | None = None,
    control_plane_problem: str = "",
) -> MeshStatus:
    """Gather the view. `problems` maps a workload name to what is wrong with its processes."""
    problems = problems or {}
    syncz: dict[str, dict[str, str]] = {}
    control_plane = control_plane_problem or "ready"
    if not control_plane_problem:
        try:
            syncz = syncz_by_proxy(get_json(f"http://{control_plane_http}/debug/syncz"))
        except (OSError, ValueError) as exc:
            control_plane = f"unreachable ({getattr(exc, 'reason', exc)})"
        except (TypeError, AttributeError) as exc:  # a /debug/syncz of another shape
            control_plane = f"unreadable /debug/syncz ({exc})"
    rows = []
    for w in workloads:
        cert, cert_error = None, ""
        try:
            cert = CertInfo.from_json(get_json(f"http://{w.pod_ip}:{AGENT_PORT}/debug/certs"))
        except (OSError, ValueError, TypeError) as exc:
            cert_error = str(getattr(exc, "reason", exc))
        rows.append(
            WorkloadStatus(
                workload=w,
                cert=cert,
                cert_error=cert_error,
                xds=syncz.get(w.proxy_name, {}),
                connected=w.proxy_name in syncz,
                stats=read_stats(stats_paths[w.name]) if w.name in stats_paths else None,
                problem=problems.get(w.name, ""),
            )
        )
    return MeshStatus(at=dt.datetime.now(dt.UTC), control_plane=control_plane, workloads=tuple(rows))
