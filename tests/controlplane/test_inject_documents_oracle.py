"""`meshplane inject` reads a manifest's documents as kubectl reads them, with kubectl itself as the oracle.

Its output goes to `kubectl apply`, so it must cut the input where kubectl cuts it (any line that begins with
`---`; anything but a comment after the `---` is an error), read each piece's first YAML document, refuse a
file kubectl refuses to read as objects, and inject every workload kubectl would create, list items included.
The check: kubectl reads the input and the output as the same objects, in the same order, the workloads with
a sidecar and everything else unchanged; or kubectl refuses the input and so does meshplane.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from controlplane.injectcmd import InjectCommandError, OfflineSettings, inject_manifests
from tests.helpers.kubectl_local import kubectl_objects

NAMES = st.sampled_from(["web", "db", "skip"])  # `skip` opts out of injection


def annotations(name: str, note: str | None) -> str:
    """Flow-style annotations: `skip` opts out of injection, and `note` is text the output must keep exactly."""
    entries = (['sidecar.istio.io/inject: "false"'] if name == "skip" else []) + (
        [f"note: {json.dumps(note)}"] if note is not None else []
    )
    return f"{{{', '.join(entries)}}}"


def pod(name: str, note: str | None = None) -> str:
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations: {annotations(name, note)}\nspec:\n"
        f"  containers: [{{name: app, image: a, env: [{{name: NOTE, value: {json.dumps(note or '')}}}]}}]\n"
    )


def deployment(name: str, note: str | None = None) -> str:
    return (
        f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: "
        f"{{app: {name}}}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n"
        f"      annotations: {annotations(name, note)}\n    spec:\n      containers:\n"
        f"      - {{name: app, image: a, env: [{{name: NOTE, value: {json.dumps(note or '')}}}]}}\n"
    )


def items(kind: str, entries: list[str]) -> str:
    return f"apiVersion: v1\nkind: {kind}\nitems:\n" + "".join(f"- {entry}\n" for entry in entries)


def item(name: str, *, kind: str = "") -> str:
    """A list item in flow style; without `kind` it takes the list's (`PodList` items are Pods)."""
    skip = ', annotations: {sidecar.istio.io/inject: "false"}' if name == "skip" else ""
    typed = f"apiVersion: v1, kind: {kind}, " if kind else ""
    spec = ", spec: {containers: [{name: a}]}" if kind in ("", "Pod") else ""
    return f"{{{typed}metadata: {{name: {name}{skip}}}{spec}}}"


_pod_items = st.one_of(NAMES.map(item), NAMES.map(lambda n: item(n, kind="Pod")))
_any_items = st.one_of(
    _pod_items,
    NAMES.map(lambda n: item(n, kind="ConfigMap")),
    st.sampled_from(["null", "{}", "[]", "{kind: List, items: []}", "{apiVersion: v1, metadata: {name: x}}"]),
)
LISTS = st.one_of(
    st.builds(items, st.just("PodList"), st.lists(_pod_items, max_size=3)),
    st.builds(items, st.sampled_from(["List", "ConfigMapList"]), st.lists(_any_items, max_size=3)),
)
# text a YAML writer must quote or break with care: indicators, YAML 1.1 words, line breaks, edge spaces
NOTES = st.one_of(st.none(), st.text("ay01o7e.:#-' \"\n\t\\|>%@`{}[],&*!?~\u00e9\u2028", max_size=12))
DOCUMENTS = st.one_of(
    st.builds(pod, NAMES, NOTES),
    st.builds(deployment, NAMES, NOTES),
    NAMES.map(lambda n: f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {n}}}\ndata: {{k: v}}\n"),
    LISTS,
    st.sampled_from(
        [
            "",
            "# only a comment\n",
            "~\n",
            "hello\n",
            "- a\n",
            "metadata: {name: kindless}\n",
            "kind: ConfigMap\napiVersion: 5\n",
            "kind: ConfigMap\nmetadata: {name: 5}\n",
            "kind: ConfigMap\nmetadata: {labels: {a: 1}}\n",
            "kind: ConfigMap\nmetadata: {name: a}\nitems: []\n",  # a list to kubectl, of nothing
            "kind: List\nitems: {}\n",
        ]
    ),
)
SEPARATORS = st.sampled_from(
    [
        *("---\n", "---\n", "--- # next\n", "---#next\n", "---  \n", "---\t# t\n", "---\r\n"),
        *("----\n", "--- x\n", "---x\n", "--- {a: 1}\n"),  # kubectl refuses these
    ]
)
ENDINGS = st.sampled_from(["", "", "\n", "...\n", "... # end\n", "...\nkind: ConfigMap\nmetadata: {name: after}\n"])


@st.composite
def manifests(draw: st.DrawFn) -> str:
    parts = [draw(st.sampled_from(["", "", "---\n", "# head\n", "---#x\n"]))]
    for index in range(draw(st.integers(1, 4))):
        if index:
            parts.append(draw(SEPARATORS))
        parts.append(draw(DOCUMENTS) + draw(ENDINGS))
    return "".join(parts)


def pod_parts(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod metadata and spec of a Pod or of a Deployment's template."""
    template = obj if obj["kind"] == "Pod" else obj["spec"]["template"]
    return template.get("metadata", {}), template["spec"]


def injected_from(after: dict[str, Any], before: dict[str, Any]) -> bool:
    """`after` has the sidecar and still holds `before`'s annotations and app container, exactly."""
    (meta, spec), (old_meta, old_spec) = pod_parts(after), pod_parts(before)
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    kept = old_meta.get("annotations", {}).items() <= meta.get("annotations", {}).items()
    return kept and old_spec["containers"][0] in containers and any(c["name"] == "istio-proxy" for c in containers)


@settings(max_examples=40, deadline=None)
@given(manifest=manifests())
@example(manifest=pod("web") + "---#x\n" + pod("db"))  # kubectl cuts at any line that begins with ---
@example(manifest="kind: ConfigMap\nmetadata: {name: a}\n--- {kind: Pod}\n")  # and refuses text after it
@example(manifest=items("PodList", [item("web")]))  # items of a PodList are Pods
@example(manifest=items("ConfigMapList", ["null"]))  # a null item is an empty object, here a ConfigMap
@example(manifest=deployment("web") + "...\n" + pod("db"))  # kubectl reads a piece's first document only
@example(manifest=pod("web", note="y") + "---\n" + deployment("db", note=" a\n\tb \n"))  # quoted, kept exactly
def test_kubectl_reads_the_injected_manifest_as_the_same_objects_with_sidecars(manifest: str) -> None:
    theirs = kubectl_objects(manifest)
    try:
        out = inject_manifests(manifest, settings=OfflineSettings())
    except InjectCommandError as e:
        assert isinstance(theirs, str) or (theirs == [] and "holds no YAML document" in str(e)), (manifest, e)
        return
    assert not isinstance(theirs, str), f"kubectl refuses what meshplane injected: {theirs}\n{manifest}"
    ours = kubectl_objects(out.text)
    assert not isinstance(ours, str), f"kubectl refuses meshplane's output: {ours}\n{out.text}"
    assert [(o["kind"], o["metadata"].get("name")) for o in ours] == [
        (o["kind"], o["metadata"].get("name")) for o in theirs
    ], out.text
    for before, after in zip(theirs, ours, strict=True):
        workload = before["kind"] in ("Pod", "Deployment") and before["metadata"]["name"] != "skip"
        assert injected_from(after, before) if workload else after == before, (before, after)
