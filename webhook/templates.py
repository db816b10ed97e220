"""Injection templates: Jinja2 templates of pod fragments, kept as data like Istio's injector keeps them.

A template renders YAML holding `metadata` and/or `spec` of a pod; injection merges each selected
template into the pod (see `webhook.merge`). Templates run in Jinja2's immutable sandbox with
`StrictUndefined`: a template cannot reach Python internals, change its inputs, or silently use a
name that does not exist. Values taken from the pod should go through `tojson`, which writes them as
JSON scalars (valid YAML), so no pod content can change the structure of the rendered YAML.

The context a template sees (see `CONTEXT_NAMES`): `pod` (the pod's `metadata` and `spec` as the user
wrote them: earlier injection removed, the user's `istio-proxy`/`istio-init` customisations taken out
and applied after rendering), `workload` (`name`, `owner`), `sidecar` (the effective settings after
annotations and config), `proxy_config` (the effective ProxyConfig), `mesh_config`, `values` (shaped
like Istio's Helm values) and `revision`.

Built-in templates (`BUILTIN_NAMES`, Istio's names and meaning) ship as package data in
`webhook/builtin/`; the chart ships the same files in the injector ConfigMap.

Performance: templates compile once per distinct source (process-wide). Each `TemplateSet` keeps
two bounded caches: parsed renderings keyed by the values of the context names the template
actually uses, so a template that does not read the pod renders once per config and pods of one
workload (identical at admission: `generateName`) render once; and parsed fragments keyed by the
rendered text, so pods that differ only where the template does not look (a label it ignores, the
replica of a StatefulSet) are rendered but not parsed again. Parsing the YAML is most of the cost.

What one rendering may cost is bounded, for the sample injection that checks a new config and for
every pod alike: its time, what it makes and what it writes (`webhook.sandbox`, the environment
templates compile in).

Errors: `TemplateError` (an `InjectionError`) names the template, the line and the reason, for a
syntax error (at load), a rendering failure, rendered text that is not YAML, or a rendered fragment
that is not a valid piece of a pod.
"""

from __future__ import annotations

import functools
import json
import threading
import traceback
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any, Generic, NamedTuple, TypeVar

import jinja2
from jinja2 import meta

from webhook import sandbox
from webhook import validate as v
from webhook.validate import InjectionError

BUILTIN_NAMES = ("sidecar", "gateway", "grpc-simple", "grpc-agent")
CONTEXT_NAMES = ("pod", "workload", "sidecar", "proxy_config", "mesh_config", "values", "revision")
RENDER_CACHE_SIZE = 512
K = TypeVar("K")
V = TypeVar("V")


class TemplateError(InjectionError):
    """A template cannot be compiled or rendered, or renders something that is not part of a pod.

    `template` is its name, `line` the template line (0 when unknown), `problem` what went wrong.
    Raised at config load for syntax errors and, through injection, per pod; the webhook rejects the
    pod with the message, `meshplane inject` exits 1.
    """

    def __init__(self, *, template: str, line: int, problem: str) -> None:
        where = f"template {template!r}" + (f" line {line}" if line else "")
        ValueError.__init__(self, f"{where}: {problem}")
        self.annotation = "inject.istio.io/templates"
        self.value = template
        self.kind = "template"
        self.template = template
        self.line = line
        self.problem = problem


_ENV = sandbox.Sandbox()


def _filename(name: str) -> str:
    return f"<template {name}>"


@functools.lru_cache(maxsize=128)
def _compile(name: str, source: str) -> tuple[jinja2.Template, frozenset[str]]:
    """The compiled template and the context names it reads. Raises `TemplateError` on bad syntax."""
    try:
        tree = _ENV.parse(source, name=name, filename=_filename(name))
        used = meta.find_undeclared_variables(tree) - set(_ENV.globals)
        with sandbox.budgeted():  # constant expressions are computed while compiling
            code = _ENV.compile(sandbox.prepare(tree), name=name, filename=_filename(name))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(template=name, line=exc.lineno, problem=f"syntax error: {exc.message}") from None
    unknown = sorted(used - set(CONTEXT_NAMES))
    if unknown:
        raise TemplateError(
            template=name,
            line=_first_line(source, unknown[0]),
            problem=f"uses {', '.join(unknown)}, which is not defined; a template can read {', '.join(CONTEXT_NAMES)}",
        )
    template = _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None))
    return template, frozenset(used)


def _first_line(source: str, word: str) -> int:
    for number, line in enumerate(source.splitlines(), start=1):
        if word in line:
            return number
    return 0


@functools.lru_cache(maxsize=1)
def builtin_sources() -> Mapping[str, str]:
    """Name -> source of the built-in templates, read from the package data."""
    folder = resources.files("webhook") / "builtin"
    return {name: (folder / f"{name}.yaml").read_text(encoding="utf-8") for name in BUILTIN_NAMES}


def _render_line(exc: BaseException, name: str) -> int:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == _filename(name)]
    return (frames[-1].lineno or 0) if frames else 0


def _key_default(value: Any) -> Any:
    return {"(type)": type(value).__name__, "(repr)": repr(value)}


class TemplateSet:
    """Compiled templates by name, and a cache of their parsed renderings. Compared by sources.

    Raises `TemplateError` from the constructor when a template does not compile.
    """

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.sources: Mapping[str, str] = dict(sources)
        self._compiled = {name: _compile(name, source) for name, source in self.sources.items()}
        self._cache: _Lru[tuple[str, str], dict[str, Any] | _Refusal] = _Lru()
        self._parsed: _Lru[tuple[str, str], dict[str, Any]] = _Lru()

    @classmethod
    def builtin(cls) -> TemplateSet:
        return _builtin_set()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TemplateSet) and self.sources == other.sources

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.sources.items())))

    def __repr__(self) -> str:
        return f"TemplateSet({sorted(self.sources)})"

    @property
    def names(self) -> list[str]:
        return sorted(self.sources)

    def render(self, name: str, context: Mapping[str, Any]) -> dict[str, Any]:
        """The parsed fragment `name` renders for `context`; shared with the cache: never mutate it.

        Raises `TemplateError` naming the template, the line and the problem. A refusal is cached like a
        fragment: the same inputs fail the same way, so the pods of one workload are refused at once
        rather than each after the rendering budget.
        """
        template, used = self._compiled[name]
        key = (name, json.dumps([context[item] for item in sorted(used)], default=_key_default))
        cached = self._cache.get(key)
        if isinstance(cached, _Refusal):
            raise TemplateError(template=name, line=cached.line, problem=cached.problem)
        if cached is not None:
            return cached
        try:
            fragment = self._fragment(name, template, context)
        except TemplateError as exc:
            self._cache.put(key, _Refusal(exc.line, exc.problem))
            raise
        self._cache.put(key, fragment)
        return fragment

    def _fragment(self, name: str, template: jinja2.Template, context: Mapping[str, Any]) -> dict[str, Any]:
        try:
            with sandbox.budgeted():
                text = template.render(context)
        except Exception as exc:  # anything the template's own expressions raise is the template's error
            problem = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else str(exc)
            raise TemplateError(template=name, line=_render_line(exc, name), problem=problem) from None
        fragment = self._parsed.get((name, text))
        if fragment is None:
            try:
                parsed = v.load_yaml(text)
            except ValueError as exc:
                raise TemplateError(template=name, line=0, problem=f"rendered text is not YAML ({exc})") from None
            fragment = self._parsed.put((name, text), check_fragment(name, parsed))
        return fragment


class _Refusal(NamedTuple):
    """A cached `TemplateError` (its line and problem): raised anew, without the first one's traceback."""

    line: int
    problem: str


class _Lru(Generic[K, V]):
    """A bounded map from keys to parsed fragments (or refusals), least recently used evicted first.

    Thread-safe: the webhook injects large pods in a worker thread while the event loop injects
    small ones with the same templates (without the lock, a key evicted by one between the other's
    lookup and its move to the end raised KeyError)."""

    def __init__(self) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._items[key] = value
            if len(self._items) > RENDER_CACHE_SIZE:
                self._items.popitem(last=False)
            return value


@functools.lru_cache(maxsize=1)
def _builtin_set() -> TemplateSet:
    return TemplateSet(builtin_sources())


# -- what a fragment may hold ------------------------------------------------------------------


def _fail(name: str, path: str, problem: str) -> TemplateError:
    return TemplateError(template=name, line=0, problem=f"renders {path}: {problem}")


def _items(name: str, parent: Mapping[str, Any], key: str, path: str, required: Iterable[str]) -> None:
    value = parent.get(key)
    if value is None:
        return
    if not isinstance(value, list):
        raise _fail(name, f"{path}.{key}", f"must be a list, got {v.type_name(value)}")
    for index, item in enumerate(value):
        where = f"{path}.{key}[{index}]"
        if not isinstance(item, dict):
            raise _fail(name, where, f"must be an object, got {v.type_name(item)}")
        for field in required:
            if item.get(field) in (None, ""):
                raise _fail(name, f"{where}.{field}", "is required")


def check_fragment(name: str, fragment: Any) -> dict[str, Any]:
    """`fragment` if it is a valid piece of a pod (else `TemplateError`); an empty rendering is `{}`."""
    if fragment is None:
        return {}
    if not isinstance(fragment, dict):
        raise _fail(name, "(top level)", f"must be an object with metadata and/or spec, got {v.type_name(fragment)}")
    for key in fragment:
        if key not in ("metadata", "spec"):
            raise _fail(name, str(key), "is not part of a pod template; use metadata and spec")
    metadata = fragment.get("metadata") or {}
    spec = fragment.get("spec") or {}
    for key, value in (("metadata", metadata), ("spec", spec)):
        if not isinstance(value, dict):
            raise _fail(name, key, f"must be an object, got {v.type_name(value)}")
    for key in ("labels", "annotations"):
        values = metadata.get(key) or {}
        if not isinstance(values, dict):
            raise _fail(name, f"metadata.{key}", f"must be an object, got {v.type_name(values)}")
        for item, value in values.items():
            if not isinstance(value, str):
                raise _fail(name, f"metadata.{key}.{item}", f"must be a string, got {v.type_name(value)} (quote it)")
    for key in ("containers", "initContainers"):
        _items(name, spec, key, "spec", ("name",))
        for index, container in enumerate(spec.get(key) or []):
            where = f"spec.{key}[{index}]"
            problem = v.container_problem(container)
            if problem is not None:
                raise _fail(name, f"{where}.{problem[0]}", problem[1])
            _items(name, container, "volumeMounts", where, ("mountPath",))
            _items(name, container, "ports", where, ("containerPort",))
    _items(name, spec, "volumes", "spec", ("name",))
    _items(name, spec, "imagePullSecrets", "spec", ("name",))
    return fragment
