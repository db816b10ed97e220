"""Which kubeconfig an operator command uses, and how it is read: as kubectl and istioctl (client-go) do.

- `--kubeconfig FILE`: that file only; it must exist.
- else `$KUBECONFIG`: a list of files (`:`-separated), merged; files that do not exist are skipped, and
  at least one must exist. The first file to set a value wins, and nothing a later file says changes
  it: the first `current-context`, and the first cluster, context or user of each name, whole (a
  later file's entry of that name is dropped, not merged into it).
- else `~/.kube/config`, when it exists;
- else none: the caller uses the in-cluster service account, in a pod.

`--context NAME` (`load(files, context)`) makes that context the current one; it must exist.

A relative file path in a kubeconfig (a cluster's `certificate-authority`; a user's
`client-certificate`, `client-key`, `tokenFile`, and an exec plugin's `command` when it names a path)
is relative to the file that says it, as client-go resolves it. Every file is read as Kubernetes
reads YAML (`controlplane.model.yamltext`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from controlplane.model.yamltext import YamlLoader
from controlplane.settings import SettingsError

NAMED_LISTS = (("clusters", "cluster"), ("contexts", "context"), ("users", "user"))
# fields holding a file path, by the named list and the key of the entry's body (client-go's ResolveLocalPaths)
PATH_FIELDS = {"clusters": ("certificate-authority",), "users": ("client-certificate", "client-key", "tokenFile")}


@dataclass(frozen=True)
class KubeconfigFiles:
    """The kubeconfig files a command reads, in precedence order, and where the list came from:
    `--kubeconfig`, `$KUBECONFIG` or `~/.kube/config`."""

    paths: tuple[pathlib.Path, ...]
    origin: str

    @classmethod
    def explicit(cls, path: pathlib.Path) -> KubeconfigFiles:
        return cls((path,), "--kubeconfig")

    def __str__(self) -> str:
        return os.pathsep.join(str(path) for path in self.paths)

    @property
    def label(self) -> str:
        """How errors name these files: `--kubeconfig: FILE`, `$KUBECONFIG: FILE`, ..."""
        return f"{self.origin}: {self}"


def locate(flag: str | None, environ: Mapping[str, str] | None = None) -> KubeconfigFiles | None:
    """The files kubectl would read: `flag`, else `$KUBECONFIG`'s, else `~/.kube/config` if it exists."""
    env = os.environ if environ is None else environ
    if flag:
        return KubeconfigFiles.explicit(pathlib.Path(flag))
    entries: list[pathlib.Path] = []
    for entry in env.get("KUBECONFIG", "").split(os.pathsep):
        path = pathlib.Path(entry) if entry else None  # no ~ expansion: kubectl leaves that to the shell
        if path is not None and path not in entries:  # client-go reads a file named twice once
            entries.append(path)
    if entries:
        return KubeconfigFiles(tuple(entries), "$KUBECONFIG")
    home = env.get("HOME")
    default = pathlib.Path(home, ".kube", "config") if home else None
    if default is not None and default.is_file():
        return KubeconfigFiles((default,), "~/.kube/config")
    return None


def load(files: KubeconfigFiles, context: str | None = None) -> dict[str, Any]:
    """The merged kubeconfig, relative paths made absolute, its current context `context` when given
    (kubectl's `--context`); SettingsError naming the file at fault, or the list when none of its
    files exists, the merge lacks clusters, contexts or a current context, or has no `context`."""
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": []}
    seen: dict[str, set[str]] = {named: set() for named, _ in NAMED_LISTS}
    read = 0
    for path in files.paths:
        doc = _read(path, files)
        if doc is None:
            continue
        read += 1
        for named, body in NAMED_LISTS:
            for entry in doc.get(named) or []:
                name = entry.get("name", "")  # kubectl takes an entry without a name as named ""
                if name in seen[named]:
                    continue  # the first file to name it wins, whole
                seen[named].add(name)
                merged[named].append(_absolute_paths(entry, named, body, path.parent))
        for key, value in doc.items():
            if key not in merged and value not in (None, ""):
                merged[key] = value  # current-context, preferences, ...: the first file to set it wins
    if read == 0:
        raise SettingsError(f"{files.origin}: none of its files exists: {', '.join(map(str, files.paths))}")
    for field in ("clusters", "contexts"):
        if not merged[field]:
            raise SettingsError(f"{files.label} has no {field}")
    if context is not None:
        names = [entry["name"] for entry in merged["contexts"]]
        if context not in names:
            raise SettingsError(f"{files.label} has no context {context!r} (its contexts: {', '.join(names)})")
        merged["current-context"] = context
    if not merged.get("current-context"):
        raise SettingsError(f"{files.label} has no current-context")
    return merged


def current_namespace(files: KubeconfigFiles, context: str | None = None) -> str | None:
    """The namespace of the current context (`context` when given), or None when it sets none (or the
    files cannot be read)."""
    try:
        config = load(files, context)
    except SettingsError:
        return None
    for entry in config["contexts"]:
        if entry.get("name") == config["current-context"]:
            context = entry.get("context")
            namespace = context.get("namespace") if isinstance(context, dict) else None
            return namespace if isinstance(namespace, str) and namespace else None
    return None


def _read(path: pathlib.Path, files: KubeconfigFiles) -> dict[str, Any] | None:
    """One file as a mapping; None for a missing file of `$KUBECONFIG`'s list (client-go skips those)."""
    label = f"{files.origin}: {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if files.origin == "$KUBECONFIG":
            return None
        raise SettingsError(f"{label} does not exist") from None
    except IsADirectoryError:
        raise SettingsError(f"{label} is a directory, not a kubeconfig file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{files.origin}: cannot read {path}: {exc}") from None
    try:
        doc = yaml.load(text, Loader=YamlLoader)  # a safe loader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise SettingsError(f"{label} is not valid YAML{where}") from None
    if doc is None:
        return {}  # an empty file is an empty config
    if not isinstance(doc, dict):
        raise SettingsError(f"{label} is not a kubeconfig (expected a mapping with clusters and contexts)")
    for named, body in NAMED_LISTS:
        entries = doc.get(named)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise SettingsError(f"{label}: {named} must be a list")
        for index, entry in enumerate(entries):  # what kubectl refuses to decode
            where = f"{label}: {named}[{index}]"
            if not isinstance(entry, dict):
                raise SettingsError(f"{where} must be a mapping with a name and a {body}")
            if not isinstance(entry.get("name", ""), str):
                raise SettingsError(f"{where}.name must be a string")
            if not isinstance(entry.get(body) or {}, dict):
                raise SettingsError(f"{where}.{body} must be a mapping")
    return doc


def _absolute_paths(entry: dict[str, Any], named: str, body_key: str, base: pathlib.Path) -> dict[str, Any]:
    body = entry.get(body_key)
    if not isinstance(body, dict):
        return entry
    body = dict(body)
    for field in PATH_FIELDS.get(named, ()):
        value = body.get(field)
        if isinstance(value, str) and value and not os.path.isabs(value):
            body[field] = str(base / value)
    exec_config = body.get("exec")
    if named == "users" and isinstance(exec_config, dict):
        command = exec_config.get("command")
        if isinstance(command, str) and os.sep in command and not os.path.isabs(command):
            body["exec"] = {**exec_config, "command": str(base / command)}  # a path, not a name on $PATH
    return {**entry, body_key: body}
