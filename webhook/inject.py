"""`inject_pod`: the pure sidecar-injection function shared by the webhook and `meshplane inject`.

Input: a pod (a Kubernetes Pod object, or a pod template's `metadata` + `spec`) and the
`InjectionParams` of the control plane. Output: the injected pod. No I/O, no clock, no randomness:
the same pod and params always give the same result.

What the pod gets is data: the injection templates (`webhook.templates`; Istio's `sidecar` by
default, others chosen with `inject.istio.io/templates: a,b` or the config's `defaultTemplates`)
render fragments that are merged into the pod in order (`webhook.merge`). What stays code, as in
Istio's injector:
- reading the annotations into the effective settings (`webhook.options`), with precise errors;
- idempotence: a pod carrying `sidecar.istio.io/status` is first stripped (`webhook.strip`);
- the user's own `istio-proxy`/`istio-init` container is taken out before rendering and merged over
  the rendered one (objects recursively, `env` by `name`, `ports` by `containerPort`,
  `volumeMounts` by `mountPath`); `image: auto` in it means "the injected image";
- placement: `istio-init`, then a native `istio-proxy`, before the user's init containers; a classic
  `istio-proxy` last among the containers (first with `holdApplicationUntilProxyStarts`);
- probes and httpGet/tcpSocket lifecycle hooks of application containers and of the user's init
  containers (native sidecars) moved to the agent's status port (`webhook.probes`), the originals
  in `ISTIO_KUBE_APP_PROBERS` (not for `grpc-agent`, nor with status port 0);
- `istio-init`'s `-u`/`-g`: the user's `istio-proxy` `runAsUser`/`runAsGroup`, else 1337;
- the Prometheus merge: `prometheus.io/{port,path,scrape}` point at the agent (status port,
  `/stats/prometheus`), the user's values saved in `ISTIO_PROMETHEUS_ANNOTATIONS` when there were
  any, read in any spelling Prometheus reads as the same (`prometheus.io.port`, the canonical one
  first, then by name) and every spelling replaced by ours; `prometheus.istio.io/scrape-targets`
  moves there too, as Istio's `targets` (its first target replacing the saved port and path), and
  leaves the pod's annotations; skipped when the mesh disables it, with
  `prometheus.istio.io/merge-metrics: "false"`, and when the pod opts out of scraping in any
  spelling Prometheus reads (`prometheus.io/scrape` or `prometheus.io.scrape: "false"`); probes and
  metrics need an `istio-proxy`, so a template set without one (`grpc-simple`) gets neither;
- `injectedAnnotations` of the config, and the status annotation listing what injection added
  (plus what exact strip-and-redo needs: the user's override containers and what templates added to
  application containers).

Errors: an invalid annotation raises `InjectionError` (annotation, value, problem); a template that
fails raises `TemplateError` (an `InjectionError` naming the template, line and reason); a
structurally malformed pod raises `InvalidPod` naming the field path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.agent.appmetrics import sidecar_port_reason
from controlplane.literals import natural
from webhook import validate as v
from webhook.config import InjectionConfig
from webhook.merge import apply_fragment, combine, strategic_merge
from webhook.options import A_SCRAPE_TARGETS, PROXY_UID, Options, read_options
from webhook.probes import PROBERS_ENV, rewrite
from webhook.sidecarcheck import check_sidecar
from webhook.strip import INIT, PROMETHEUS_ENV, PROMETHEUS_KEYS, PROXY, STATUS, strip
from webhook.templates import TemplateError
from webhook.validate import InjectionError, InvalidPod

__all__ = ["InjectionError", "InjectionParams", "InvalidPod", "TemplateError", "inject_pod", "workload_identity"]

_CRONJOB_JOB = re.compile(r"^(.+)-\d{8,10}$", re.ASCII)
_NOT_LABEL_CHAR = re.compile(r"[^A-Za-z0-9_]")
_FALSE = ("0", "f", "F", "false", "False", "FALSE")  # what Go's strconv.ParseBool reads as false
MAX_ID = 2**32 - 2
AUTO_IMAGE = "auto"


@dataclass(frozen=True, kw_only=True)
class InjectionParams:
    """Who is injecting: the control plane revision and identity, and the pod's namespace.

    `discovery_address` is `istiod[-<rev>].<control-plane-ns>.svc:15012` (used for CA_ADDR and as
    the default `discoveryAddress` of PROXY_CONFIG). `workload_*` override the workload identity
    that is otherwise derived from the pod's ownerReferences; `meshplane inject` sets them from
    the enclosing Deployment, Job, ... (`workload_kind` "" means Pod, `workload_api_version` ""
    means v1).
    """

    revision: str
    namespace: str
    config: InjectionConfig
    discovery_address: str
    trust_domain: str
    cluster_id: str
    network: str = ""
    workload_name: str = ""
    workload_kind: str = ""
    workload_api_version: str = ""


# -- structural reads (InvalidPod) --------------------------------------------------------------


def _object(parent: dict[str, Any], key: str, path: str, *, create: bool = False) -> dict[str, Any] | None:
    value = parent.get(key)
    if value is None:
        if create:
            parent[key] = value = {}
        return value
    if not isinstance(value, dict):
        raise InvalidPod(path, f"must be an object, got {v.type_name(value)}")
    return value


def _list(parent: Mapping[str, Any], key: str, path: str) -> list[Any] | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidPod(path, f"must be a list, got {v.type_name(value)}")
    return value


def _objects(parent: Mapping[str, Any], key: str, path: str, *, named: bool = False) -> list[dict[str, Any]]:
    items = _list(parent, key, path) or []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidPod(f"{path}[{index}]", f"must be an object, got {v.type_name(item)}")
        if named and (not isinstance(item.get("name"), str) or not item["name"]):
            raise InvalidPod(f"{path}[{index}].name", "is required and must be a non-empty string")
    return items


def _string_map(meta: dict[str, Any], key: str) -> dict[str, str]:
    value = _object(meta, key, f"metadata.{key}", create=True)
    assert value is not None
    for name, item in value.items():
        if not isinstance(item, str):
            raise InvalidPod(f"metadata.{key}.{name}", f"must be a string, got {v.type_name(item)}")
    return value


# -- workload identity --------------------------------------------------------------------------


def workload_identity(
    pod: Mapping[str, Any], *, namespace: str, params: InjectionParams | None = None
) -> tuple[str, str]:
    """(workload name, owner URI) of a pod, as Istio derives them.

    The params' override wins. Otherwise the controller ownerReference decides: a ReplicaSet named
    `<d>-<pod-template-hash>` is Deployment `<d>`; a Job named `<c>-<8 to 10 digits>` is CronJob
    `<c>`; any other controller is itself. A pod without a controller is its own workload (its
    name, or its generateName without the trailing dash).
    """
    if params is not None and params.workload_name:
        name = params.workload_name
        kind = params.workload_kind or "Pod"
        api_version = params.workload_api_version or "v1"
    else:
        meta = pod.get("metadata") or {}
        refs = meta.get("ownerReferences")
        if refs is not None and not isinstance(refs, list):
            raise InvalidPod("metadata.ownerReferences", f"must be a list, got {v.type_name(refs)}")
        controller = None
        for index, ref in enumerate(refs or []):
            if not isinstance(ref, dict):
                raise InvalidPod(f"metadata.ownerReferences[{index}]", "must be an object")
            if ref.get("controller") is True:
                for key in ("apiVersion", "kind", "name"):
                    if not isinstance(ref.get(key), str) or not ref[key]:
                        raise InvalidPod(f"metadata.ownerReferences[{index}].{key}", "must be a non-empty string")
                controller = ref
                break
        if controller is not None:
            name, kind, api_version = controller["name"], controller["kind"], controller["apiVersion"]
            labels = meta.get("labels") or {}
            template_hash = labels.get("pod-template-hash") if isinstance(labels, dict) else None
            if kind == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
                name, kind, api_version = name[: -len(template_hash) - 1], "Deployment", "apps/v1"
            elif kind == "Job" and (match := _CRONJOB_JOB.match(name)):
                name, kind, api_version = match[1], "CronJob", "batch/v1"
        else:
            raw_name = meta.get("name") or str(meta.get("generateName") or "").removesuffix("-")
            name, kind, api_version = str(raw_name), "Pod", "v1"
    owner = f"kubernetes://apis/{api_version}/namespaces/{namespace}/{kind.lower()}s/{name}"
    return name, owner


# -- inject -------------------------------------------------------------------------------------


def _take_overrides(spec: dict[str, Any], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Remove the user's containers named `names` from the pod; return them with where they were."""
    overrides: list[dict[str, Any]] = []
    seen: set[str] = set()
    for list_key in ("initContainers", "containers"):
        items = spec.get(list_key) or []
        for index in range(len(items) - 1, -1, -1):
            name = items[index]["name"]
            if name in names:
                if name in seen:
                    raise InvalidPod(f"spec.{list_key}[{index}].name", f"container {name!r} appears twice")
                seen.add(name)
                overrides.append({"list": list_key, "index": index, "container": items.pop(index)})
    overrides.sort(key=lambda entry: (entry["list"] != "initContainers", entry["index"]))
    return overrides


def _proxy_ids(overrides: list[dict[str, Any]]) -> tuple[int, int]:
    """The proxy's effective (runAsUser, runAsGroup): the user's istio-proxy securityContext, else 1337."""
    uid = gid = PROXY_UID
    for entry in overrides:
        container = entry["container"]
        if container["name"] != PROXY or container.get("securityContext") is None:
            continue
        where = f"spec.{entry['list']}[{entry['index']}].securityContext"
        context = container["securityContext"]
        if not isinstance(context, dict):
            raise InvalidPod(where, f"must be an object, got {v.type_name(context)}")
        ids = []
        for field, default in (("runAsUser", uid), ("runAsGroup", gid)):
            value = context.get(field, default)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
                raise InvalidPod(f"{where}.{field}", f"must be a numeric id 0-{MAX_ID}, got {json.dumps(value)}")
            ids.append(value)
        uid, gid = ids
    return uid, gid


def _context(
    pod: dict[str, Any],
    o: Options,
    params: InjectionParams,
    *,
    labels: Mapping[str, str],
    workload: tuple[str, str],
    proxy_ids: tuple[int, int],
) -> dict[str, Any]:
    config = params.config
    trust_domain = config.trust_domain or params.trust_domain
    sidecar = o.context(config=config, discovery_address=params.discovery_address, trust_domain=trust_domain)
    sidecar["proxy_uid"], sidecar["proxy_gid"] = proxy_ids
    sidecar["network"] = labels.get("topology.istio.io/network") or params.network or config.network
    sidecar["cluster_id"] = params.cluster_id
    return {
        **config.template_inputs,
        "pod": {"metadata": pod["metadata"], "spec": pod["spec"]},
        "workload": {"name": workload[0], "owner": workload[1]},
        "sidecar": sidecar,
        "proxy_config": o.proxy_config,
        "revision": params.revision,
    }


def _spellings(annotations: Mapping[str, str], key: str) -> list[str]:
    """The pod's annotation names Prometheus reads as `prometheus.io/<key>` (`prometheus.io.port`,
    `prometheus-io/port`, ...: its service discovery turns every other character into `_`), sorted,
    the canonical spelling first."""
    canonical = f"prometheus.io/{key}"
    found = [name for name in annotations if _NOT_LABEL_CHAR.sub("_", name) == f"prometheus_io_{key}"]
    return sorted(found, key=lambda name: (name != canonical, name))


def _prometheus_value(annotations: Mapping[str, str], key: str) -> str:
    """The pod's `prometheus.io/<key>` in any spelling; the canonical one wins, then the first by name
    (where Istio takes whichever its map yields first)."""
    names = _spellings(annotations, key)
    return annotations[names[0]] if names else ""


def _scrape_disabled(annotations: Mapping[str, str]) -> bool:
    """Prometheus' scrape opt-out in any spelling Prometheus reads as the same (`prometheus.io.scrape`, ...)."""
    return any(annotations[name] in _FALSE for name in _spellings(annotations, "scrape"))


def _names(items: Any) -> list[str]:
    return [str(item.get("name")) for item in items or [] if isinstance(item, dict)]


def _find(spec: dict[str, Any], name: str) -> tuple[str, int] | None:
    for list_key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(list_key) or []):
            if container.get("name") == name:
                return list_key, index
    return None


def _place(spec: dict[str, Any], *, hold: bool) -> None:
    """istio-init, then a native istio-proxy, first among init containers; a classic proxy last (first: hold)."""
    inits = spec.get("initContainers") or []
    front = [c for name in (INIT, PROXY) for c in inits if c["name"] == name]
    if front:
        spec["initContainers"] = front + [c for c in inits if c["name"] not in (INIT, PROXY)]
    containers = spec.get("containers") or []
    proxies = [c for c in containers if c["name"] == PROXY]
    if proxies:
        rest = [c for c in containers if c["name"] != PROXY]
        spec["containers"] = proxies + rest if hold else rest + proxies


def metrics_port_on_sidecar(annotations: Mapping[str, str], *, status_port: int) -> str | None:
    """Which of the sidecar's own ports the pod's `prometheus.io/port` names ("15090 (Envoy Prometheus)"), or None.

    Such a pod keeps its Prometheus annotations as they are: merging would make the agent scrape its
    own sidecar. The status port is Istio's case of a pod already pointing at the agent (re-injected)."""
    port = natural(_prometheus_value(annotations, "port").strip())
    if port is None:
        return None
    reason = sidecar_port_reason(port, status_port=status_port)
    return f"{port} ({reason})" if reason else None


def inject_pod(pod: dict[str, Any], params: InjectionParams, *, warnings: list[str] | None = None) -> dict[str, Any]:
    """Return `pod` with the sidecar injected (mutating and returning the argument).

    Raises `InjectionError` for an invalid or unsupported injection annotation, `TemplateError` for
    a template that fails, and `InvalidPod` for a structurally malformed pod. Does not consult the
    injection policy: call `webhook.policy.injection_required` first. What the user should know but
    does not stop injection (metrics left unmerged) is appended to `warnings`.
    """
    if not isinstance(pod, dict):
        raise InvalidPod("(pod)", f"must be an object, got {v.type_name(pod)}")
    meta = _object(pod, "metadata", "metadata", create=True)
    spec = _object(pod, "spec", "spec")
    assert meta is not None
    if spec is None:
        raise InvalidPod("spec", "is required")
    labels = _string_map(meta, "labels")
    annotations = _string_map(meta, "annotations")
    for key in ("containers", "initContainers"):
        _objects(spec, key, f"spec.{key}", named=True)
    _objects(spec, "volumes", "spec.volumes", named=True)
    _objects(spec, "imagePullSecrets", "spec.imagePullSecrets")

    if STATUS in annotations:
        strip(pod, annotations[STATUS])
    config = params.config
    o = read_options(annotations, config=config, discovery_address=params.discovery_address)
    overrides = _take_overrides(spec, (PROXY,) if o.interception == "NONE" else (INIT, PROXY))
    containers: list[dict[str, Any]] = spec.get("containers") or []
    if not containers and not overrides:
        raise InvalidPod("spec.containers", "needs at least one application container")
    users = [(f"spec.containers[{index}]", container) for index, container in enumerate(containers)]
    users += [(f"spec.{entry['list']}[{entry['index']}]", entry["container"]) for entry in overrides]
    for path, container in users:
        problem = v.container_problem(container)
        if problem is not None:
            raise InvalidPod(f"{path}.{problem[0]}", problem[1])
    indexed_apps = list(enumerate(containers))
    probe_targets = [(f"spec.initContainers[{i}]", c) for i, c in enumerate(spec.get("initContainers") or [])]
    probe_targets += [(f"spec.containers[{i}]", c) for i, c in indexed_apps]
    workload = workload_identity(pod, namespace=params.namespace, params=params)

    context = _context(pod, o, params, labels=labels, workload=workload, proxy_ids=_proxy_ids(overrides))
    fragments = [config.templates.render(name, context) for name in o.templates]
    fragment = fragments[0] if len(fragments) == 1 else combine(fragments)
    rendered = set(_names((fragment.get("spec") or {}).get("initContainers")))
    rendered.update(_names((fragment.get("spec") or {}).get("containers")))
    for entry in [e for e in overrides if e["container"]["name"] not in rendered]:  # not ours to customise
        overrides.remove(entry)
        target = spec.setdefault(entry["list"], [])
        target.insert(min(entry["index"], len(target)), entry["container"])
    has_proxy = PROXY in rendered

    before = {
        key: set(_names(spec.get(key))) for key in ("initContainers", "containers", "volumes", "imagePullSecrets")
    }
    app_before = {c["name"]: (set(_names(c.get("env"))), set(_names(c.get("volumeMounts")))) for c in containers}
    saved_prometheus = None
    merge_metrics = has_proxy and o.prometheus_merge and not _scrape_disabled(annotations)
    on_sidecar = metrics_port_on_sidecar(annotations, status_port=o.status_port)
    reinjected = _prometheus_value(annotations, "port").strip() == str(o.status_port)
    if merge_metrics and on_sidecar and not reinjected and warnings is not None:
        warnings.append(
            f"prometheus.io/port {on_sidecar} is a port of the sidecar, not of the application: its metrics are "
            "not merged with the application's, and the pod's Prometheus annotations are left as they are"
        )
    merge_metrics = merge_metrics and on_sidecar is None
    if merge_metrics:
        saved: dict[str, Any] = {key: _prometheus_value(annotations, key) for key in PROMETHEUS_KEYS}
        if o.scrape_targets:  # Istio's shape: the first target also as port/path, for agents without targets
            saved.update(port=str(o.scrape_targets[0].port), path=o.scrape_targets[0].path)
            saved["targets"] = [{"port": str(t.port), "path": t.path} for t in o.scrape_targets]
        if any(saved.values()):
            saved_prometheus = json.dumps(saved, separators=(",", ":"))
    annotations.update(config.injected_annotations)  # here for their place among the annotations
    apply_fragment(pod, fragment)
    annotations.update(config.injected_annotations)  # and again, as they win over templates (Istio's order)
    if merge_metrics:  # after the templates' annotations: where re-injection adds what strip removed
        for key in PROMETHEUS_KEYS:  # another spelling left beside ours would be a second, conflicting value
            for name in _spellings(annotations, key):
                if name != f"prometheus.io/{key}":
                    del annotations[name]
        annotations["prometheus.io/port"] = str(o.status_port)
        annotations["prometheus.io/path"] = "/stats/prometheus"
        annotations["prometheus.io/scrape"] = "true"
        annotations.pop(A_SCRAPE_TARGETS, None)  # now in the agent's env, as Istio leaves it

    proxy_at = _find(spec, PROXY) if has_proxy else None
    if proxy_at is not None:
        proxy = spec[proxy_at[0]][proxy_at[1]]
        env = proxy.setdefault("env", [])
        if o.rewrite_probes and o.status_port:
            probers = rewrite(probe_targets, o.status_port)
            if probers:
                env.append({"name": PROBERS_ENV, "value": json.dumps(probers, sort_keys=True, separators=(",", ":"))})
        if saved_prometheus is not None:
            env.append({"name": PROMETHEUS_ENV, "value": saved_prometheus})
    for entry in overrides:
        override = entry["container"]
        if override.get("image") == AUTO_IMAGE:
            override = {key: value for key, value in override.items() if key != "image"}
        found = _find(spec, override["name"])
        assert found is not None  # only overrides of rendered containers are kept
        list_key, index = found
        spec[list_key][index] = strategic_merge(spec[list_key][index], override, where=f"{override['name']} override")
    for container in spec.get("initContainers") or []:
        if container["name"] == PROXY and "restartPolicy" not in container:
            container["restartPolicy"] = "Always"
    _place(spec, hold=o.hold)
    check_sidecar(pod, namespace=params.namespace, proxy_metadata=o.proxy_config.get("proxyMetadata") or {})

    status: dict[str, Any] = {
        key: [name for name in _names(spec.get(key)) if name not in before[key]] or None
        for key in ("initContainers", "containers", "volumes", "imagePullSecrets")
    }
    status["revision"] = params.revision
    if overrides:
        status["overrides"] = overrides
    app_changes: dict[str, Any] = {}
    for _, container in indexed_apps:
        env_before, mounts_before = app_before[container["name"]]
        added = {
            "env": [name for name in _names(container.get("env")) if name not in env_before],
            "volumeMounts": [name for name in _names(container.get("volumeMounts")) if name not in mounts_before],
        }
        if added["env"] or added["volumeMounts"]:
            app_changes[container["name"]] = added
    if app_changes:
        status["appContainers"] = app_changes
    annotations[STATUS] = json.dumps(status, separators=(",", ":"))
    return pod
