"""The Deployment controller's arithmetic, as pure functions: hashes, fenceposts, revisions, status.

Facts from upstream `pkg/controller/deployment/util`: the pod-template-hash is a FNV-32a hash of
the template (plus the collision count) written in the "safe" alphabet; maxSurge rounds up and
maxUnavailable down, and when both come to 0 maxUnavailable is 1; a Deployment is complete when
updated, total and available replicas all equal `spec.replicas` and its generation was observed.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tests.kubesim.ctl_base import Obj, parse_stamp, stamp

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
NOT_COPIED = {
    REVISION,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deployment.kubernetes.io/revision-history",
    "kubectl.kubernetes.io/last-applied-configuration",
}
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"


def _fnv32a(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def template_hash(template: Mapping[str, Any], collision_count: int = 0) -> str:
    """The pod-template-hash label value of a template (stable across runs, changes with any field)."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += str(collision_count).encode()
    return "".join(SAFE_ALPHABET[int(d) % len(SAFE_ALPHABET)] for d in str(_fnv32a(data)))


def without_hash(template: Mapping[str, Any]) -> Obj:
    clean = copy.deepcopy(dict(template))
    labels = (clean.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
        if not labels:
            clean["metadata"].pop("labels")
    return clean


def scaled(value: Any, total: int, *, round_up: bool) -> int:
    """An IntOrString (`3` or `"25%"`) against `total`."""
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value or 0)


def fenceposts(deployment: Mapping[str, Any]) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) of a RollingUpdate deployment; (0, 0) for Recreate."""
    spec = deployment["spec"]
    strategy = spec.get("strategy") or {}
    if strategy.get("type") != "RollingUpdate":
        return 0, 0
    rolling = strategy.get("rollingUpdate") or {}
    desired = int(spec.get("replicas", 1))
    surge = scaled(rolling.get("maxSurge", "25%"), desired, round_up=True)
    unavailable = scaled(rolling.get("maxUnavailable", "25%"), desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, min(unavailable, desired)


def replicas(rs: Mapping[str, Any]) -> int:
    return int((rs.get("spec") or {}).get("replicas", 0))


def status_count(rs: Mapping[str, Any], field: str) -> int:
    return int((rs.get("status") or {}).get(field, 0))


def revision(rs: Mapping[str, Any]) -> int:
    text = ((rs.get("metadata") or {}).get("annotations") or {}).get(REVISION, "0")
    try:
        return int(text)
    except ValueError:
        return 0


def copied_annotations(deployment: Mapping[str, Any]) -> dict[str, str]:
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if k not in NOT_COPIED}


def condition(status: Mapping[str, Any], kind: str) -> Obj | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def set_condition(status: Obj, new: Obj) -> None:
    """Upstream SetDeploymentCondition: unchanged status+reason is kept; otherwise replaced, moved last."""
    current = condition(status, new["type"])
    if current is not None and current["status"] == new["status"] and current.get("reason") == new.get("reason"):
        return
    if current is not None and current["status"] == new["status"]:
        new["lastTransitionTime"] = current["lastTransitionTime"]
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != new["type"]] + [new]


def new_condition(kind: str, state: str, reason: str, message: str, when: datetime.datetime) -> Obj:
    at = stamp(when)
    return {
        "type": kind,
        "status": state,
        "lastUpdateTime": at,
        "lastTransitionTime": at,
        "reason": reason,
        "message": message,
    }


def complete(deployment: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    desired = int(deployment["spec"].get("replicas", 1))
    counts = [int(status.get(f, 0)) for f in ("updatedReplicas", "replicas", "availableReplicas")]
    observed = int(status.get("observedGeneration", 0)) >= int(deployment["metadata"].get("generation", 1))
    return observed and counts == [desired] * 3


def progressing(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    def count(status: Mapping[str, Any], field: str) -> int:
        return int(status.get(field, 0))

    return (
        count(new, "updatedReplicas") > count(old, "updatedReplicas")
        or count(new, "replicas") - count(new, "updatedReplicas")
        < count(old, "replicas") - count(old, "updatedReplicas")
        or count(new, "readyReplicas") > count(old, "readyReplicas")
        or count(new, "availableReplicas") > count(old, "availableReplicas")
    )


def deadline_left(deployment: Mapping[str, Any], status: Mapping[str, Any], when: datetime.datetime) -> float | None:
    """Seconds until the progress deadline passes (<= 0: passed); None when no deadline is ticking."""
    deadline = deployment["spec"].get("progressDeadlineSeconds")
    cond = condition(status, "Progressing")
    if deadline is None or cond is None or cond.get("reason") == NEW_RS_AVAILABLE:
        return None
    if cond.get("reason") == TIMED_OUT:
        return 0.0
    since = parse_stamp(cond.get("lastUpdateTime") or stamp(when))
    return (since + datetime.timedelta(seconds=int(deadline)) - when).total_seconds()


def calculate_status(
    deployment: Mapping[str, Any], all_rss: Sequence[Obj], new_rs: Obj | None, when: datetime.datetime
) -> Obj:
    """The status upstream's syncRolloutStatus writes: counts, then Available, then Progressing."""
    desired = int(deployment["spec"].get("replicas", 1))
    old_status = deployment.get("status") or {}
    available = sum(status_count(rs, "availableReplicas") for rs in all_rss)
    counts = {
        "replicas": sum(status_count(rs, "replicas") for rs in all_rss),
        "updatedReplicas": status_count(new_rs, "replicas") if new_rs is not None else 0,
        "readyReplicas": sum(status_count(rs, "readyReplicas") for rs in all_rss),
        "availableReplicas": available,
        "unavailableReplicas": max(0, sum(replicas(rs) for rs in all_rss) - available),
    }
    status: Obj = {"observedGeneration": deployment["metadata"].get("generation", 1)}
    status.update({k: v for k, v in counts.items() if v})
    if old_status.get("collisionCount"):
        status["collisionCount"] = old_status["collisionCount"]
    status["conditions"] = copy.deepcopy(old_status.get("conditions") or [])
    if available >= desired - fenceposts(deployment)[1]:
        set_condition(
            status,
            new_condition(
                "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.", when
            ),
        )
    else:
        set_condition(
            status,
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                when,
            ),
        )
    current = condition(status, "Progressing")
    name = new_rs["metadata"]["name"] if new_rs is not None else ""
    finished = current is not None and current.get("reason") == NEW_RS_AVAILABLE
    if deployment["spec"].get("progressDeadlineSeconds") is None:
        status["conditions"] = [c for c in status["conditions"] if c.get("type") != "Progressing"]
    elif not (finished and status.get("replicas", 0) == status.get("updatedReplicas", 0)):
        if complete(deployment, status):
            message = f'ReplicaSet "{name}" has successfully progressed.'
            set_condition(status, new_condition("Progressing", "True", NEW_RS_AVAILABLE, message, when))
        elif progressing(old_status, status):
            message = f'ReplicaSet "{name}" is progressing.' if name else "Deployment is progressing."
            fresh = new_condition("Progressing", "True", RS_UPDATED, message, when)
            if current is not None and current["status"] == "True":
                fresh["lastTransitionTime"] = current["lastTransitionTime"]
            status["conditions"] = [c for c in status["conditions"] if c.get("type") != "Progressing"] + [fresh]
        elif (left := deadline_left(deployment, status, when)) is not None and left <= 0:
            message = f'ReplicaSet "{name}" has timed out progressing.'
            set_condition(status, new_condition("Progressing", "False", TIMED_OUT, message, when))
    if not status["conditions"]:
        del status["conditions"]
    return status
