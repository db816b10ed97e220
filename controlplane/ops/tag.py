"""`meshplane tag set|list|remove|generate`: revision tags, as istioctl and charts/istiod make them.

- `set T --revision R [--overwrite]` creates (or moves) the tag's MutatingWebhookConfiguration and
  Service (see `controlplane.ops.tagobjects`); for `default` it also deactivates the webhooks the
  tag takes over. Prints istioctl's message.
- `generate T --revision R` prints those objects as YAML and changes nothing.
- `list [-o table|json|yaml]`: `TAG REVISION NAMESPACES`, a revision without tags as a row with an
  empty TAG (as istioctl); NAMESPACES are those labelled `istio.io/rev=<tag>` (on a revision's own
  row, `=<revision>`).
- `remove T [--force]` deletes every MutatingWebhookConfiguration, ValidatingWebhookConfiguration
  and istiod Service labelled `istio.io/tag=T`; for `default` it first re-activates what `set`
  deactivated.

Writes are create/update/delete carrying the resourceVersion read (a concurrent edit fails with
409 instead of being overwritten), in an order that never leaves a pod without its injector: the
tag's objects before deactivating, re-activating before deleting. When a write fails, the ones
already made are undone in reverse order, so the cluster is left as it was; the error names the
failed write, and anything the undo could not restore.

Refusals (exit 1, one line on stderr naming the object and the fix): a tag that names a revision,
an unknown revision, an existing tag without `--overwrite`, removing a tag that namespaces still
use (and, for `default`, that `istio-injection=enabled` namespaces need) without `--force`, a tag
that does not exist. Bad flags exit 2 (argparse). An unreachable API server or an unusable
kubeconfig is one line, exit 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import yaml

from controlplane.kube.client import JsonObject, KubeApi, KubeApiError
from controlplane.model import yamltext
from controlplane.ops.common import CommandError, add_connection_flags, run_against_cluster, table
from controlplane.ops.tagobjects import (
    DEFAULT,
    NEVER_MATCH,
    REV_LABEL,
    TAG_LABEL,
    deactivated,
    describe,
    labels_of,
    manifest,
    name_of,
    prefix_of,
    reactivated,
    tag_objects,
)

FIELD_MANAGER = "meshplane-tag"
MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
VWC = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink")
_FAILURES = (KubeApiError, aiohttp.ClientError, OSError, TimeoutError)


# -- reading and writing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One change: `create` `obj`, `replace` `before` by `obj`, or `delete` `obj` (as read)."""

    action: Literal["create", "replace", "delete"]
    obj: JsonObject
    before: JsonObject | None = None

    @property
    def what(self) -> str:
        return describe(self.obj)


def _collection(obj: JsonObject) -> str:
    if obj["kind"] == "Service":
        return f"/api/v1/namespaces/{obj['metadata']['namespace']}/services"
    return MWC if obj["kind"] == "MutatingWebhookConfiguration" else VWC


def _item(obj: JsonObject) -> str:
    return f"{_collection(obj)}/{name_of(obj)}"


def _fresh(obj: JsonObject) -> JsonObject:
    """`obj` without what the server sets, ready to be created again."""
    out = copy.deepcopy(obj)
    for key in _SERVER_FIELDS:
        out["metadata"].pop(key, None)
    out.pop("status", None)
    return out


async def _list(api: KubeApi, path: str, kind: str, *, selector: str = "") -> list[JsonObject]:
    answer = await api.request("GET", path, query=[("labelSelector", selector)] if selector else [])
    version = "v1" if kind in ("Service", "Namespace") else "admissionregistration.k8s.io/v1"
    return [{"apiVersion": version, "kind": kind, **item} for item in answer.get("items") or []]


async def _write(api: KubeApi, action: Literal["create", "replace", "delete"], obj: JsonObject) -> JsonObject:
    query = [("fieldManager", FIELD_MANAGER)]
    if action == "create":
        return await api.request("POST", _collection(obj), query=query, body=obj)
    if action == "replace":
        return await api.request("PUT", _item(obj), query=query, body=obj)
    meta = obj["metadata"]
    precondition = {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
    return await api.request(
        "DELETE", _item(obj), body={"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": precondition}
    )


async def apply(api: KubeApi, writes: Sequence[Write]) -> None:
    """Make `writes` in order; on a failure undo the ones made (reverse order) and raise CommandError."""
    done: list[tuple[Write, JsonObject]] = []
    for write in writes:
        try:
            done.append((write, await _write(api, write.action, write.obj)))
        except _FAILURES as exc:
            stuck = await _undo(api, done)
            outcome = "nothing was changed" if not stuck else f"could not undo: {'; '.join(stuck)} (fix by hand)"
            reason = str(exc) or type(exc).__name__
            raise CommandError(f"could not {write.action} {write.what}: {reason}; {outcome}") from None


async def _undo(api: KubeApi, done: Sequence[tuple[Write, JsonObject]]) -> list[str]:
    stuck = []
    for write, result in reversed(done):
        try:
            if write.action == "create":
                await _write(api, "delete", {**write.obj, "metadata": result["metadata"]})
            elif write.action == "delete":
                await _write(api, "create", _fresh(write.obj))
            else:
                restored = copy.deepcopy(write.before or {})
                restored["metadata"]["resourceVersion"] = result["metadata"]["resourceVersion"]
                await _write(api, "replace", restored)
        except _FAILURES as exc:
            stuck.append(f"{write.what} ({str(exc) or type(exc).__name__})")
    return stuck


def _upsert(desired: JsonObject, existing: JsonObject | None) -> Write | None:
    """Create `desired`, or replace `existing` with it (keeping what the server set), or None if equal."""
    if existing is None:
        return Write("create", desired)
    merged = copy.deepcopy(existing)
    merged["metadata"]["labels"] = desired["metadata"]["labels"]
    if desired["kind"] == "Service":
        merged["spec"].update(ports=desired["spec"]["ports"], selector=desired["spec"]["selector"])
    else:
        merged["webhooks"] = desired["webhooks"]
    return None if merged == existing else Write("replace", merged, existing)


@dataclass(frozen=True)
class Snapshot:
    """What the tag commands read: every MutatingWebhookConfiguration, and istiod Services with `istio.io/rev`."""

    configs: list[JsonObject]
    services: list[JsonObject]

    @classmethod
    async def read(cls, api: KubeApi) -> Snapshot:
        return cls(
            configs=await _list(api, MWC, "MutatingWebhookConfiguration"),
            services=await _list(api, "/api/v1/services", "Service", selector=f"{REV_LABEL},app=istiod"),
        )

    def revision_configs(self, revision: str | None = None) -> list[JsonObject]:
        """Revisions' own injector configurations (labelled `istio.io/rev`, not `istio.io/tag`), of one or all."""
        return [
            c
            for c in self.configs
            if REV_LABEL in labels_of(c)
            and TAG_LABEL not in labels_of(c)
            and revision in (None, labels_of(c)[REV_LABEL])
        ]

    def tagged(self, tag: str) -> list[JsonObject]:
        return [o for o in (*self.configs, *self.services) if labels_of(o).get(TAG_LABEL) == tag]


def _check_names(*, tag: str, revision: str | None = None) -> None:
    if not _NAME.fullmatch(tag) or len(f"istiod-revision-tag-{tag}") > 63:
        raise CommandError(
            f"tag {tag!r}: use lowercase letters, digits and '-' (at most 43), starting and ending alphanumeric"
        )
    if revision is not None and (not _NAME.fullmatch(revision) or len(revision) > 63):
        raise CommandError(f"--revision {revision!r}: a revision is lowercase letters, digits and '-' (at most 63)")


def _unknown_revision(snap: Snapshot, revision: str) -> CommandError:
    tag_of = next((labels_of(o)[REV_LABEL] for o in snap.tagged(revision) if REV_LABEL in labels_of(o)), None)
    if tag_of is not None:
        return CommandError(f'"{revision}" is a revision tag pointing at revision "{tag_of}": pass --revision {tag_of}')
    known = sorted({labels_of(c)[REV_LABEL] for c in snap.revision_configs()})
    return CommandError(
        f'cannot find control plane revision "{revision}": no MutatingWebhookConfiguration is labelled '
        f"{REV_LABEL}={revision} without {TAG_LABEL} "
        f"({'installed revisions: ' + ', '.join(known) if known else 'no revision is installed'}); "
        f"install it first (helm install istiod-{revision} ... --set revision={revision}) or pass another --revision"
    )


async def plan_set(
    api: KubeApi, *, tag: str, revision: str, overwrite: bool, generate: bool = False
) -> tuple[list[JsonObject], list[Write]]:
    """The tag's objects and the writes that make them (and, for `default`, deactivate what it takes over).

    Raises CommandError for the refusals in the module docstring; `generate` skips the existing-tag refusal.
    """
    snap = await Snapshot.read(api)
    if tag != DEFAULT:
        clash = [c for c in snap.configs if name_of(c) == f"istio-sidecar-injector-{tag}"]
        clash += snap.revision_configs(tag) + [s for s in snap.services if labels_of(s)[REV_LABEL] == tag]
        clash = [o for o in clash if TAG_LABEL not in labels_of(o)]
        if clash:
            raise CommandError(
                f'cannot create revision tag "{tag}": {describe(clash[0])} belongs to control plane revision "{tag}"; '
                "a tag must not share a revision's name (both would inject the same namespaces): choose another name"
            )
    owners = snap.revision_configs(revision)
    if not owners:
        raise _unknown_revision(snap, revision)
    if len(owners) > 1:
        names = ", ".join(name_of(c) for c in owners)
        raise CommandError(f'revision "{revision}" has several injector configurations ({names}); delete all but one')
    desired = tag_objects(tag=tag, revision_config=owners[0])
    current = snap.tagged(tag)
    if current and not overwrite and not generate:
        points = sorted({labels_of(o).get(REV_LABEL, "?") for o in current})
        raise CommandError(
            f'revision tag "{tag}" already exists ({", ".join(describe(o) for o in current)}, pointing at revision '
            f'{", ".join(points)}): pass --overwrite to point it at "{revision}", '
            f"or run `meshplane tag remove {tag}` first"
        )
    by_key = {(o["kind"], name_of(o)): o for o in current}
    writes = [w for d in desired if (w := _upsert(d, by_key.get((d["kind"], name_of(d))))) is not None]
    if tag == DEFAULT:
        writes += [Write("replace", d, c) for c in snap.revision_configs() if (d := deactivated(c)) is not None]
    kept = {(d["kind"], name_of(d)) for d in desired}
    writes += [Write("delete", o) for o in current if (o["kind"], name_of(o)) not in kept]
    return desired, writes


async def _users(api: KubeApi, tag: str, restored: Sequence[JsonObject]) -> list[str]:
    """Namespaces that would lose their injector if `tag` went, given the configurations re-activated."""
    names: set[str] = set()
    if not (tag == DEFAULT and any(labels_of(c).get(REV_LABEL) == DEFAULT for c in restored)):
        names |= {
            name_of(n) for n in await _list(api, "/api/v1/namespaces", "Namespace", selector=f"{REV_LABEL}={tag}")
        }
    legacy = any(
        prefix_of(h) == "namespace." and h.get("namespaceSelector") != NEVER_MATCH
        for c in restored
        for h in c.get("webhooks") or []
    )
    if tag == DEFAULT and not legacy:
        names |= {
            name_of(n) for n in await _list(api, "/api/v1/namespaces", "Namespace", selector="istio-injection=enabled")
        }
    return sorted(names)


async def plan_remove(api: KubeApi, *, tag: str, force: bool) -> list[Write]:
    """Re-activations (for `default`), then deletes of everything labelled `istio.io/tag=<tag>`. Raises CommandError."""
    snap = await Snapshot.read(api)
    doomed = snap.tagged(tag) + await _list(api, VWC, "ValidatingWebhookConfiguration", selector=f"{TAG_LABEL}={tag}")
    if not doomed:
        raise CommandError(
            f'cannot remove tag "{tag}": no MutatingWebhookConfiguration or Service carries {TAG_LABEL}={tag} '
            "(`meshplane tag list` shows the tags)"
        )
    revive = (
        [Write("replace", r, c) for c in snap.revision_configs() if (r := reactivated(c))] if tag == DEFAULT else []
    )
    users = await _users(api, tag, [w.obj for w in revive])
    if users and not force:
        raise CommandError(
            f'revision tag "{tag}" is still used by namespace(s) {", ".join(users)}: their new pods would get no '
            f"sidecar. Point them elsewhere first (kubectl label namespace NAME {REV_LABEL}=REVISION --overwrite), "
            "or pass --force to remove the tag anyway"
        )
    return revive + [Write("delete", o) for o in doomed]


@dataclass(frozen=True)
class TagRow:
    """One row of `tag list`: a tag and its revision, or a revision without tags (tag "")."""

    tag: str
    revision: str
    namespaces: tuple[str, ...]


async def list_tags(api: KubeApi) -> list[TagRow]:
    """Tags and revisions as istioctl lists them, sorted by revision then tag.

    NAMESPACES are the namespaces labelled `istio.io/rev=<tag>` (for a revision's own row, `=<revision>`).
    """
    snap = await Snapshot.read(api)
    pairs = {
        (labels_of(o)[REV_LABEL], labels_of(o).get(TAG_LABEL, ""))
        for o in snap.configs + snap.services
        if REV_LABEL in labels_of(o)
    }
    tagged = {rev for rev, tag in pairs if tag}
    pairs = {(rev, tag) for rev, tag in pairs if tag or rev not in tagged}
    namespaces = await _list(api, "/api/v1/namespaces", "Namespace", selector=REV_LABEL)
    using: dict[str, list[str]] = {}
    for ns in namespaces:
        using.setdefault(labels_of(ns)[REV_LABEL], []).append(name_of(ns))
    return [TagRow(tag, rev, tuple(sorted(using.get(tag or rev, [])))) for rev, tag in sorted(pairs)]


# -- the command ------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Register `tag` and its subcommands on the `meshplane` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    add_connection_flags(common)
    p: argparse.ArgumentParser = sub.add_parser(
        "tag",
        help="create, list and remove revision tags",
        description="Revision tags: aliases of control plane revisions for the namespace label istio.io/rev. "
        "Relabel nothing during an upgrade: point the tag at the new revision and restart the workloads.",
    )
    tags = p.add_subparsers(dest="tag_command", metavar="COMMAND", required=True)
    for name, text in (("set", "create or move a tag"), ("generate", "print the tag's objects, change nothing")):
        s = tags.add_parser(name, parents=[common], help=text, description=text)
        s.add_argument("tag", help="the tag; 'default' also takes over istio-injection=enabled")
        s.add_argument("-r", "--revision", required=True, help="the control plane revision the tag points at")
        if name == "set":
            s.add_argument("--overwrite", action="store_true", help="point an existing tag at --revision")
    ls = tags.add_parser("list", parents=[common], help="list tags, their revisions and namespaces")
    ls.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table", help="output format")
    rm = tags.add_parser("remove", parents=[common], help="delete a tag's webhook configuration and Service")
    rm.add_argument("tag", help="the tag")
    rm.add_argument(
        "--force", "-y", "--skip-confirmation", action="store_true", help="remove it although namespaces still use it"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when done; 1 with one line on stderr for a refusal, an API error or no cluster."""
    prog = f"meshplane tag {args.tag_command}"
    if args.tag_command != "list":
        try:
            _check_names(tag=args.tag, revision=getattr(args, "revision", None))
        except CommandError as exc:
            print(f"{prog}: {exc.message}", file=sys.stderr)
            return 1
    return run_against_cluster(prog, args, lambda api: _dispatch(api, args))


async def _dispatch(api: KubeApi, args: argparse.Namespace) -> int:
    if args.tag_command == "list":
        rows = await list_tags(api)
        data = [{"tag": r.tag, "revision": r.revision, "namespaces": list(r.namespaces)} for r in rows]
        if args.output == "json":
            print(json.dumps(data, indent=2))
        elif args.output == "yaml":
            print(yaml.dump(data, Dumper=yamltext.YamlDumper, sort_keys=False), end="")
        else:
            cells = [(r.tag, r.revision, ",".join(r.namespaces)) for r in rows]
            print(table([("TAG", "REVISION", "NAMESPACES"), *cells]) if rows else "No Istio revision tags found.")
        return 0
    if args.tag_command == "remove":
        writes = await plan_remove(api, tag=args.tag, force=args.force)
        await apply(api, writes)
        for write in writes:
            if write.action == "replace":
                print(f"Re-activated the injection webhooks of {write.what}")
        print(f"Revision tag {args.tag} removed")
        return 0
    generate = args.tag_command == "generate"
    desired, writes = await plan_set(
        api, tag=args.tag, revision=args.revision, overwrite=getattr(args, "overwrite", False), generate=generate
    )
    if generate:
        print(manifest(desired), end="")
        if args.tag == DEFAULT:
            print(
                "note: applying this does not deactivate the webhooks the default tag takes over; "
                "`meshplane tag set default` does",
                file=sys.stderr,
            )
        return 0
    await apply(api, writes)
    print(
        f'Revision tag "{args.tag}" created, referencing control plane revision "{args.revision}". To enable '
        f"injection using this revision tag, use 'kubectl label namespace <NAMESPACE> {REV_LABEL}={args.tag}'"
    )
    for write in writes:
        if write.action == "replace" and TAG_LABEL not in labels_of(write.obj):
            print(f'Deactivated the webhooks of {write.what} that the "default" tag takes over')
    return 0
