"""Bounded YAML: parse text a user wrote without letting its shape decide what parsing costs.

- libyaml's loader where PyYAML was built with it (several times faster than the pure-Python one,
  and it stops nesting at 1,000 levels instead of exhausting the interpreter's stack);
- in text embedded in an object, aliases (`*name`) are refused: one small value could expand into
  gigabytes; nesting deeper than the caller's `max_depth` is refused before anything is built, and
  text over the caller's `max_bytes` before it is parsed at all (`check_yaml`, `load_yaml`);
- in whole files, where Kubernetes' own YAML decoding allows aliases, they are allowed within
  bounds: a document may not contain itself, nor grow through aliases beyond
  `ALIAS_FREE_NODES` nodes or twice the nodes written in it, whichever is more (`load_all`). A
  500-byte "billion laughs" file otherwise builds 40 million strings, and a recursive alias
  (`&a [*a]`) a value that never ends.

`check_yaml` walks the event stream, never recursing; `load_yaml` checks, then loads, and reports
a failure as `ValueError` with the line and column; `load_all` raises `yaml.YAMLError` with a mark.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INT64 = range(-(2**63), 2**63)


class YamlLoader(_SafeLoader):  # type: ignore[misc]
    """The safe loader, whose integers are 64-bit as Kubernetes' (and Istio's) are: one beyond that
    range is refused with a mark. PyYAML converts with `int()`, which raises a bare `ValueError` for
    more than 4,300 digits: a config file holding such a number stopped the control plane."""


def _construct_int64(loader: Any, node: yaml.ScalarNode) -> int:
    try:
        value: int = _SafeLoader.construct_yaml_int(loader, node)
    except ValueError:
        value = _INT64.stop  # more digits than int() converts
    if value not in _INT64:
        shown = node.value if len(node.value) <= 24 else f"{node.value[:20]}... ({len(node.value):,} characters)"
        raise yaml.constructor.ConstructorError(
            None, None, f"the integer {shown} is out of the range of a 64-bit integer", node.start_mark
        )
    return value


YamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int64)

_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def check_yaml(text: str, *, max_depth: int) -> None:
    """Walk the YAML event stream (no recursion, no objects built) and raise `yaml.YAMLError` with a
    mark for an alias or nesting deeper than `max_depth`. Syntax errors raise as the parser finds them."""
    depth = 0
    for event in yaml.parse(text, Loader=YamlLoader):
        if isinstance(event, _OPEN):
            depth += 1
            if depth > max_depth:
                raise _refusal(f"nests deeper than {max_depth} levels", event)
        elif isinstance(event, _CLOSE):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            raise _refusal("YAML aliases (*name) are not allowed here", event)


def load_yaml(text: str, *, max_depth: int, max_bytes: int | None = None) -> Any:
    """Parse one YAML (or JSON) document of plain data; `ValueError` naming the line and column on a
    syntax error, an alias or nesting deeper than `max_depth`, or the size when over `max_bytes`."""
    size = len(text.encode())
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"is {size:,} bytes; at most {max_bytes:,} are read")
    try:
        check_yaml(text, max_depth=max_depth)
        return yaml.load(text, Loader=YamlLoader)  # a safe loader: plain data only
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"not valid YAML/JSON{error_place(exc, text)}: {problem}") from None


def error_place(exc: yaml.YAMLError, text: str) -> str:
    """Where `exc` marks `text`, as ' at line L column C' (1-based); '' when it marks nothing."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return ""
    lines = text.split("\n")
    line, column = mark.line, mark.column
    if line >= len(lines):  # libyaml places the end of the text after a final line break it assumes
        line, column = len(lines) - 1, len(lines[-1])
    return f" at line {line + 1} column {column + 1}"


ALIAS_FREE_NODES = 100_000


def load_all(text: str) -> Iterator[Any]:
    """Every YAML (or JSON) document of `text`, as plain data (a safe loader), with aliases bounded
    as the module says. Raises `yaml.YAMLError` (with a mark) as the document that fails is reached,
    after yielding those before it."""
    loader = YamlLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if "&" in text:  # no anchor, no alias: nothing to count
                _check_aliases(node)
            yield loader.construct_document(node)
    finally:
        loader.dispose()


def _check_aliases(root: yaml.Node) -> None:
    """Raise for a node that contains itself, or for a document whose aliases make it larger than
    allowed. An alias is the node its anchor names, so a shared node is one reached twice; each
    collection is counted once (no recursion, no expansion), each scalar where it is named."""
    size: dict[int, int] = {}  # id(collection) -> the nodes it stands for, once counted
    open_nodes: set[int] = set()  # collections whose children are being counted: reached again, a cycle
    written = 0  # collections, and the scalars written (or named) in them
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_counted = stack.pop()
        key = id(node)
        if children_counted:
            open_nodes.discard(key)
            size[key] = 1 + sum(
                1 if isinstance(child, yaml.ScalarNode) else size[id(child)] for child in _children(node)
            )
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _refusal("a YAML alias (*name) refers to a node that contains it", node)
        children = _children(node)
        collections = [child for child in children if not isinstance(child, yaml.ScalarNode)]
        written += 1 + len(children) - len(collections)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in collections if id(child) not in size)
    expanded = size.get(id(root), 1)
    allowed = max(ALIAS_FREE_NODES, 2 * written)
    if expanded > allowed:
        problem = (
            f"YAML aliases (*name) expand this document to {expanded:,} nodes; it has {written:,} of its own,"
            f" and at most {allowed:,} are read"
        )
        raise _refusal(problem, root)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _refusal(problem: str, at: Any) -> yaml.MarkedYAMLError:
    """An error marked where the event or node `at` starts."""
    return yaml.MarkedYAMLError(problem=problem, problem_mark=at.start_mark)
