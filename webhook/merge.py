"""Merging template fragments into a pod, as Istio's injector does (strategic merge by name).

Three operations, each with its own precedence:
- `strategic_merge(base, patch)`: `patch` wins. Used to combine the selected templates in order and
  to apply the user's own `istio-proxy`/`istio-init` container over the rendered one. Objects merge
  recursively; `containers` and `initContainers` merge item by item on `name` (a container a later
  template names in the other list is merged where it already is, so a customisation of
  `istio-proxy` under `containers` reaches the native sidecar); `env` (by `name`), `ports` (by
  `containerPort`), `volumeMounts` (by `mountPath`), `volumes` and `imagePullSecrets` (by `name`)
  replace the item with the same key and append the others (a volume has exactly one source, so two
  are never merged into one); any other value is replaced.
- `apply_fragment(pod, fragment)`: the combined templates onto the user's pod. Labels and
  annotations of the fragment win; containers the pod does not have are appended; a container the
  pod already has only gains what it lacks (keys, and `env`/`ports`/`volumeMounts` items with a new
  key): the user's own settings win, as in Istio, which re-applies the user's containers; volumes
  and pull secrets the pod already has stay the user's; other `spec` fields merge with the
  fragment winning.
Nothing here mutates or keeps a reference to a fragment (they are shared with the render cache).
"""

from __future__ import annotations

from typing import Any

from webhook import validate as v
from webhook.validate import InvalidPod

_ITEM_KEYS = {
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumes": "name",
    "imagePullSecrets": "name",
}
_CONTAINER_LISTS = ("initContainers", "containers")


def copy_tree(value: Any) -> Any:
    """A deep copy of a JSON-shaped value (dicts, lists, scalars), faster than `copy.deepcopy`."""
    if isinstance(value, dict):
        return {key: copy_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_tree(item) for item in value]
    return value


def _objects(value: list[Any], where: str) -> list[dict[str, Any]]:
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidPod(f"{where}[{index}]", f"must be an object, got {v.type_name(item)}")
    return value


def _merge_items(base: list[Any], patch: list[Any], key: str, where: str, *, merge: bool) -> list[Any]:
    out = list(base)
    for item in _objects(patch, where):
        position = next((i for i, m in enumerate(out) if isinstance(m, dict) and m.get(key) == item.get(key)), None)
        if position is None:
            out.append(copy_tree(item))
        elif merge:
            out[position] = strategic_merge(out[position], item, where=f"{where}[{item.get(key)}]")
        else:
            out[position] = copy_tree(item)
    return out


def strategic_merge(base: dict[str, Any], patch: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A new object: `patch` over `base` (see the module doc). Raises `InvalidPod` for a list item of
    `patch` that must be an object and is not, naming it under `where`."""
    out = dict(base)
    for key, value in patch.items():
        here = f"{where}.{key}"
        current = out.get(key)
        if key in _ITEM_KEYS and isinstance(current, list) and isinstance(value, list):
            out[key] = _merge_items(current, value, _ITEM_KEYS[key], here, merge=False)
        elif key in _CONTAINER_LISTS and isinstance(current, list) and isinstance(value, list):
            out[key] = _merge_items(current, value, "name", here, merge=True)
        elif isinstance(value, dict) and isinstance(current, dict):
            out[key] = strategic_merge(current, value, where=here)
        else:
            out[key] = copy_tree(value)
    return out


def combine(fragments: list[dict[str, Any]]) -> dict[str, Any]:
    """The fragments merged in order, later ones winning (see `strategic_merge`)."""
    out: dict[str, Any] = {}
    for fragment in fragments:
        patch = fragment
        spec = fragment.get("spec")
        if isinstance(spec, dict) and isinstance(out.get("spec"), dict):
            patch = {**fragment, "spec": _to_existing_lists(out["spec"], spec)}
        out = strategic_merge(out, patch, where="(templates)")
    return out


def _to_existing_lists(base: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with each container moved to the list (containers/initContainers) where `base` has it."""
    moved = {key: list(spec.get(key) or []) for key in _CONTAINER_LISTS}
    for key, other in (("containers", "initContainers"), ("initContainers", "containers")):
        names = {c.get("name") for c in base.get(other) or [] if isinstance(c, dict)}
        stay = [c for c in moved[key] if c.get("name") not in names]
        moved[other] += [c for c in moved[key] if c.get("name") in names]
        moved[key] = stay
    out = dict(spec)
    for key in _CONTAINER_LISTS:
        if moved[key] or key in spec:
            out[key] = moved[key]
    return out


def _fill(user: dict[str, Any], template: dict[str, Any]) -> None:
    """Add to `user` what `template` has and `user` lacks; the user's values win."""
    for key, value in template.items():
        current = user.get(key)
        if key not in user:
            user[key] = copy_tree(value)
        elif key in _ITEM_KEYS and isinstance(current, list) and isinstance(value, list):
            have = {item.get(_ITEM_KEYS[key]) for item in current if isinstance(item, dict)}
            current.extend(copy_tree(item) for item in value if item.get(_ITEM_KEYS[key]) not in have)
        elif isinstance(current, dict) and isinstance(value, dict):
            _fill(current, value)


def apply_fragment(pod: dict[str, Any], fragment: dict[str, Any]) -> None:
    """Merge the combined templates into `pod` in place (see the module doc).

    The pod must have been checked by injection (`metadata.labels`/`annotations` are string maps,
    container lists hold named objects); the fragment by `webhook.templates.check_fragment`.
    """
    meta: dict[str, Any] = pod["metadata"]
    for key, value in (fragment.get("metadata") or {}).items():
        if key in ("labels", "annotations"):
            meta[key].update(value)
        elif isinstance(value, dict) and isinstance(meta.get(key), dict):
            meta[key] = strategic_merge(meta[key], value, where=f"metadata.{key}")
        else:
            meta[key] = copy_tree(value)
    spec: dict[str, Any] = pod["spec"]
    for key, value in (fragment.get("spec") or {}).items():
        current = spec.get(key)
        if key in _CONTAINER_LISTS or key in ("volumes", "imagePullSecrets"):
            if current is None:
                if not value:
                    continue
                spec[key] = current = []
            by_name = {item.get("name"): item for item in current if isinstance(item, dict)}
            for item in value:
                if item["name"] not in by_name:
                    current.append(copy_tree(item))
                elif key in _CONTAINER_LISTS:
                    _fill(by_name[item["name"]], item)
        elif isinstance(value, dict) and isinstance(current, dict):
            spec[key] = strategic_merge(current, value, where=f"spec.{key}")
        else:
            spec[key] = copy_tree(value)
