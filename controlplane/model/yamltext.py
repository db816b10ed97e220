"""Bounded YAML: parse text a user wrote without letting its shape decide what parsing costs.

- libyaml's loader where PyYAML was built with it (several times faster than the pure-Python one,
  and it stops nesting at 1,000 levels instead of exhausting the interpreter's stack);
- aliases (`*name`) are refused: one small value could expand into gigabytes;
- nesting deeper than the caller's `max_depth` is refused before anything is built, and text
  over the caller's `max_bytes` before it is parsed at all.

`check_yaml` walks the event stream, never recursing; `load_yaml` checks, then loads, and reports
a failure as `ValueError` with the line and column.
"""

from __future__ import annotations

from typing import Any

import yaml

YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

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
        mark = getattr(exc, "problem_mark", None)
        where = ""
        if mark is not None:
            lines = text.split("\n")
            line, column = mark.line, mark.column
            if line >= len(lines):  # libyaml places the end of the text after a final line break it assumes
                line, column = len(lines) - 1, len(lines[-1])
            where = f" at line {line + 1} column {column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"not valid YAML/JSON{where}: {problem}") from None


def _refusal(problem: str, event: Any) -> yaml.MarkedYAMLError:
    return yaml.MarkedYAMLError(problem=problem, problem_mark=event.start_mark)
