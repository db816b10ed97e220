"""The sandbox injection templates render in: Jinja's immutable sandbox, with what a rendering costs bounded.

Jinja's sandbox keeps a template away from Python's internals and from changing its inputs, and bounds a
single `range()`. It does not bound what a rendering costs, and a template renders on the webhook's event
loop or its worker thread for every workload's pods, with the pod as input: one template and one pod could
hold the webhook or its memory. Every rendering (the sample injection's at config load, and each pod's)
is therefore bounded in:

- time: it stops after `RENDER_BUDGET_S`, counted at every loop step and every call. Jinja repeats
  nothing but loops and calls (macros, recursive loops); every `for` loop's iterable is wrapped when the
  template compiles (`prepare`), so loops nested in loops are counted too.
- what it makes: each operation that can make more text or items than its inputs hold first estimates
  what it would make, and the rendering stops once its total would pass `MAX_MADE`. These are `*`, `+`
  and `%`; `~`; printing a value that is not text (a list prints its items' text); the filters that
  make text (`tojson`, `string`, `join`, `format`, `center`, `indent`, `replace`, `wordwrap`,
  `upper`...) or lists (`list`, `sort`, `batch`, `slice`...), and `sum` of lists (each addition copies
  the total so far); the string methods that take a width, a replacement or parts (`center`, `ljust`,
  `zfill`, `expandtabs`, `replace`, `join`, `translate`, `format`...), `int.to_bytes`; and `lipsum`.
  A collection is estimated as its text, each shared item counted wherever it appears: a list of a
  thousand references to one long string prints it a thousand times. So `'x' * 3000000000`,
  `'x' | center(10 ** 9)`, a string doubled in a loop, or a few nested lists of shared items printed
  as text are refused before anything is made.
- text: what a rendering writes, and the text of a macro or a block `set`, may not pass
  `MAX_RENDERED_BYTES` characters, counted before the pieces are joined (a loop printing one large
  string from the pod many times is refused holding only references to it, not after joining
  gigabytes).
- integers: `*` and `**` may not make one of over `MAX_POWER_BITS` bits (Python refuses to print one of over
  4,300 digits itself).

A refusal raises `RenderTooCostly`, which the template's caller reports as the template's error. Jinja's
optimizer, which computes constant expressions while compiling and writes their values into the compiled
code, is off: a constant list of ten million items became source code that took 8 GB and 80 s to compile.
What Jinja still computes while compiling (a printed constant) goes through the same checks, under the same
budget (`budgeted` around the compilation); a refused one is left to the rendering, which refuses it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.filters import FILTERS, make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum
from jinja2.visitor import NodeTransformer

RENDER_BUDGET_S = 2.0  # renderings take well under a millisecond; the API server waits 10 s for the webhook
MAX_MADE = (
    8_000_000  # characters or items a rendering may make: five times the largest pod (1.5 MiB); 64 MB as list items
)
MAX_RENDERED_BYTES = 1024 * 1024  # a pod must fit in the API server's 1.5 MiB request
MAX_POWER_BITS = 10_000  # bits an integer `*` or `**` may make


class RenderTooCostly(Exception):
    """A rendering ran past its budget (`RENDER_BUDGET_S`) or would make too much (`MAX_MADE`)."""


class _Budget(threading.local):
    """The running rendering's deadline and what it has made, in this thread (renderings run on the
    event loop and in a worker thread); `left` counts steps down to the next look at the clock."""

    deadline: float | None = None
    left = 0
    made = 0


_BUDGET = _Budget()
_CLOCK_EVERY = 64  # steps between looks at the clock: a step is a call, a loop step or an operator


@contextlib.contextmanager
def budgeted() -> Iterator[None]:
    """Renderings (and compilations) in this block stop once `RENDER_BUDGET_S` have passed or they
    would make more than `MAX_MADE`."""
    _BUDGET.deadline, _BUDGET.left, _BUDGET.made = time.monotonic() + RENDER_BUDGET_S, _CLOCK_EVERY, 0
    try:
        yield
    finally:
        _BUDGET.deadline = None


def _step() -> None:
    budget = _BUDGET
    budget.left -= 1
    if budget.left <= 0:
        budget.left = _CLOCK_EVERY
        if budget.deadline is not None and time.monotonic() > budget.deadline:
            budget.deadline = None  # raised once: the template's own cleanup code runs unchecked
            raise RenderTooCostly(f"rendering took longer than {RENDER_BUDGET_S:g}s (does a loop run too long?)")


def _made(amount: int, what: str) -> None:
    """Count what `what` is about to make; refuse it when the rendering's total would pass `MAX_MADE`."""
    budget = _BUDGET
    total = budget.made + amount
    if total > MAX_MADE:
        raise RenderTooCostly(
            f"{what} would make {amount:,} characters or items, {total:,} in this rendering; "
            f"a rendering may make at most {MAX_MADE:,}"
            if amount <= MAX_MADE
            else f"{what} would make {amount:,} characters or items; a rendering may make at most {MAX_MADE:,}"
        )
    budget.made = total


def _bits(bits: int, operator: str) -> None:
    if bits > MAX_POWER_BITS:
        raise RenderTooCostly(f"{operator!r} would make an integer of over {MAX_POWER_BITS:,} bits")


def _estimated(what: str, estimate: Callable[..., int], *args: Any) -> None:
    """`_made` with what `estimate(*args)` says `what` would make."""
    try:
        amount = estimate(*args)
    except _TooLarge:
        raise RenderTooCostly(
            f"{what} would make over {MAX_MADE:,} characters or items; a rendering may make at most {MAX_MADE:,}"
        ) from None
    _made(amount, what)


# -- estimates: how much text or how many items an operation would make ------------------------


def size(value: Any) -> int:
    """About how many characters `value` makes as text: a string's length, a number's digits, a
    collection's items with their punctuation, each shared item counted wherever it appears. Past
    `MAX_MADE` the count stops, raising `_TooLarge` (the value is too large whatever the rest holds)."""
    if isinstance(value, str):
        return len(value)
    return _size(value, {})


class _TooLarge(Exception):
    """`size` stopped counting: over `MAX_MADE`."""


def _size(value: Any, seen: dict[int, int]) -> int:
    kind = type(value)
    if kind is str or kind is bytes:
        return len(value) + 3  # with quotes (and b) as an item's repr; escapes are not counted
    if kind is int:
        bits: int = value.bit_length()
        return bits // 3 + 2
    if kind not in _COLLECTIONS:
        if isinstance(value, (str, bytes)):
            return len(value) + 3
        if isinstance(value, Namespace):
            return _size(object.__getattribute__(value, "_Namespace__attrs"), seen)  # printed as its attributes
        if not isinstance(value, (list, tuple, set, frozenset, dict)):
            return 24  # a number, None, an Undefined, a loop or macro object
    key = id(value)
    known = seen.get(key)
    if known is not None:
        return known
    if 3 * len(value) > MAX_MADE:  # each item takes at least 3 characters ("1, ")
        raise _TooLarge
    seen[key] = 0  # a collection holding itself prints `[...]` there
    total = 2
    for items in (value, value.values()) if isinstance(value, dict) else (value,):  # a mapping's keys, then values
        if len(items) > _FEW and set(map(type, items)) <= _TEXT:  # all text: counted without a loop in Python
            total += sum(map(len, items)) + 5 * len(items)
            continue
        for item in items:
            kind = type(item)
            if kind is str:
                total += len(item) + 5
            elif kind is int:
                total += item.bit_length() // 3 + 4
            else:
                total += 26 if kind in _SCALARS else _size(item, seen) + 2
        if total > MAX_MADE:
            raise _TooLarge
    seen[key] = total
    return total


_COLLECTIONS = frozenset({dict, list, tuple})
_TEXT = frozenset({str})
_FEW = 16  # up to this many items, a loop in Python costs less than looking at their types first
_SCALARS = frozenset({float, bool, type(None)})  # at most 24 characters


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _largest(values: Iterable[Any]) -> int:
    return max((size(value) for value in values), default=0)


def _largest_int(values: Iterable[Any]) -> int:
    return max((abs(value) for value in values if isinstance(value, int)), default=0)


_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?.")


def _percent_made(text: str | bytes, operand: Any) -> int:
    """`text % operand`: each conversion prints at most the largest value with its width and precision."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    values = list(
        operand.values() if isinstance(operand, Mapping) else operand if isinstance(operand, tuple) else [operand]
    )
    largest, widest = _largest(values), _largest_int(values)
    total = len(text)
    for match in _PERCENT_FIELD.finditer(text):
        for number in match.groups():
            total += widest if number == "*" else int(number) if number else 0
        total += largest
    return total


def _format_made(text: str, values: list[Any]) -> int:
    """`text.format(...)`: each field prints at most the largest value with its width and precision
    (a width given by a nested field is at most the largest integer among the values)."""
    largest, widest = _largest(values), _largest_int(values)
    total = 0
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError:
        return len(text)  # the call itself refuses the format
    for literal, field, spec, _conversion in fields:
        total += len(literal)
        if field is not None:
            total += largest + sum(int(number) for number in re.findall(r"\d+", spec or ""))
            total += widest if spec and "{" in spec else 0
    return total


def _replaced(text: Any, old: Any, new: Any, count: Any = None) -> int:
    if not isinstance(text, str) or not isinstance(old, str):
        return size(text) * (size(new) + 1)
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * size(new)


def _joined(items: list[Any], separator: Any) -> int:
    return sum(size(item) for item in items) + size(separator) * len(items)


def _indented(text: Any, width: Any = 4, first: Any = False, blank: Any = False) -> int:
    lines = text.count("\n") + 1 if isinstance(text, str) else size(text)
    return size(text) + lines * (len(width) if isinstance(width, str) else _int(width))


def _wrapped(
    text: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None, break_on_hyphens: Any = True
) -> int:
    lines = size(text) // max(_int(width), 1) + (text.count("\n") if isinstance(text, str) else 0) + 1
    return size(text) + lines * (size(wrapstring) if wrapstring is not None else 1)


def _text(value: Any, *_: Any, **__: Any) -> int:
    return size(value)


# What each filter that makes text or items would make, from its arguments after the value's.
_FILTER_MADE: dict[str, Callable[..., int]] = {
    **dict.fromkeys(
        (
            "capitalize",
            "e",
            "escape",
            "forceescape",
            "lower",
            "pprint",
            "string",
            "striptags",
            "title",
            "trim",
            "truncate",
            "upper",
            "urlencode",
            "urlize",
            "wordcount",
            "xmlattr",
        ),
        _text,
    ),
    "center": lambda value, width=80: size(value) + _int(width),
    "indent": _indented,
    "wordwrap": _wrapped,
    "format": lambda value, *args, **kwargs: (
        _percent_made(value, kwargs or args) if isinstance(value, str) else size(value) * (1 + _largest(args))
    ),
    "replace": _replaced,
    "join": lambda items, d="", attribute=None: _joined(items, d),
    "batch": lambda items, linecount, fill_with=None: len(items) + (_int(linecount) if fill_with is not None else 0),
    "slice": lambda items, slices, fill_with=None: len(items) + _LIST_ITEMS * _int(slices),
    **dict.fromkeys(("list", "sort", "reverse", "unique", "dictsort"), lambda items, *_, **__: len(items)),
}
_LIST_ITEMS = 8  # a list costs what eight items in a list do
_LISTED = frozenset({"join", "batch", "slice", "list", "sort", "reverse", "unique"})  # a generator is read once


def _counted_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    estimate = _FILTER_MADE[name]
    skip = 1 if getattr(original, "jinja_pass_arg", None) is not None else 0  # the context or environment

    what = f"filter {name!r}"
    text = estimate is _text

    @functools.wraps(original)  # keeps `jinja_pass_arg`
    def counted(*args: Any, **kwargs: Any) -> Any:
        if text and len(args) > skip and type(args[skip]) is str:
            _made(len(args[skip]), what)  # the common case, made short
            return original(*args, **kwargs)
        if name in _LISTED and len(args) > skip and not isinstance(args[skip], (list, tuple, str)):
            args = (*args[:skip], list(args[skip]), *args[skip + 1 :])
        with contextlib.suppress(TypeError):  # the wrong arguments: the filter itself says what is wrong
            _estimated(what, functools.partial(estimate, **kwargs) if kwargs else estimate, *args[skip:])
        return original(*args, **kwargs)

    return counted


_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


def _method_made(owner: str | bytes, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """What a string's method makes beyond its string's length (0 for methods that make no more)."""
    if name in _WIDTH_METHODS and args:
        return len(owner) + _int(args[0])
    if name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        return len(owner) + tabs * _int(tabsize)
    if name == "replace" and len(args) >= 2:
        return _replaced(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count"))
    if name == "join" and args:
        return _joined(args[0], owner)
    if name == "translate" and args and isinstance(args[0], Mapping):
        return len(owner) * (1 + _largest(args[0].values()))
    return 0


@jinja2.pass_environment
def _sum(environment: jinja2.Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    """The `sum` filter, adding one item at a time: adding lists copies the running total each time,
    which is counted, and each addition is a step."""
    if isinstance(start, (str, bytes)):
        raise TypeError("sum() can't sum strings [use ''.join(seq) instead]")
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    total = start
    for item in iterable:
        _step()
        if isinstance(total, (list, tuple)) and isinstance(item, (list, tuple)):
            _made(len(total) + len(item), "filter 'sum'")
        total = total + item
    return total


def _finalize(value: Any) -> Any:
    """Every printed value: one that is not text or a number is counted as the text it prints."""
    if type(value) not in _PRINTED_AS_IS:
        _estimated("printing a value", size, value)
    return value


_PRINTED_AS_IS = frozenset({str, int, float, bool})  # an int prints at most 4,300 digits


def _tojson(value: Any, sort_keys: bool = False) -> str:
    """JSON text of `value`: a valid YAML scalar or flow collection, keys in their order unless sorted.
    Counted here rather than wrapped, as it is the filter templates use most."""
    kind = type(value)
    if kind is str:
        _made(len(value), "filter 'tojson'")
    elif kind not in _PRINTED_AS_IS:
        if isinstance(value, jinja2.Undefined):
            str(value)  # StrictUndefined raises, naming what is missing
        _estimated("filter 'tojson'", size, value)
    return (_SORTED_JSON if sort_keys else _JSON).encode(value)


_JSON = json.JSONEncoder(separators=(",", ":"))  # `json.dumps` would make one on every call
_SORTED_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def _joined_text(parts: list[Any]) -> str:
    """`a ~ b ~ c`: the parts' text joined, counted first."""
    if all(type(part) is str for part in parts):
        _made(sum(map(len, parts)), "'~'")
        return "".join(parts)
    _estimated("'~'", lambda: sum(size(part) for part in parts))
    return "".join(map(str, parts))


def _written(pieces: Iterable[str]) -> str:
    """The text a rendering (or a macro, or a block `set`) writes, refused when it would pass the limit:
    the pieces are counted before they are joined (a loop printing one large string from the pod many
    times holds only references to it until then)."""
    kept = list(pieces)
    written = sum(map(len, kept))
    if written > MAX_RENDERED_BYTES:
        raise RenderTooCostly(f"renders {written:,} characters; a rendering may write at most {MAX_RENDERED_BYTES:,}")
    return "".join(kept)


def _stepped(iterable: Any) -> Iterator[Any]:
    """Every loop's iterable, wrapped at compile time (`prepare`)."""
    for item in iterable:
        _step()
        yield item


_SEQUENCES = (str, bytes, list, tuple)
_STEPPED = "(stepped)"  # filter names no template can write
_CONCAT = "(concat)"


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every call, operator and loop step counted against the time
    budget and what each would make against `MAX_MADE` (see the module's docstring)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_written)

    def __init__(self) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
            finalize=_finalize,
            optimized=False,  # a folded constant becomes source code: a large one took gigabytes to compile
        )
        for name in _FILTER_MADE:
            self.filters[name] = _counted_filter(name, FILTERS[name])
        self.filters["tojson"] = _tojson
        self.filters["sum"] = _sum
        self.filters[_STEPPED] = _stepped
        self.filters[_CONCAT] = _joined_text
        self.globals["lipsum"] = _counted_lipsum

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, bytes)):
            name = getattr(__obj, "__name__", "")
            if name == "join" and args and not isinstance(args[0], (list, tuple)):
                args = (list(args[0]), *args[1:])  # read once, to count and to join
            _estimated(repr(name), _method_made, owner, name, args, kwargs)
        elif isinstance(owner, int) and getattr(__obj, "__name__", "") == "to_bytes":
            _made(_int(args[0] if args else kwargs.get("length", 1)), "'to_bytes'")
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _step()
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, _SEQUENCES) and isinstance(count, int):
                    _made(len(sequence) * count, "'*'")
            if isinstance(left, int) and isinstance(right, int):
                _bits(left.bit_length() + right.bit_length(), operator)
        elif operator == "+":
            if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
                _made(len(left) + len(right), "'+'")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                _bits(left.bit_length() * right, operator)
        elif isinstance(left, (str, bytes)):  # '%' formatting
            _estimated("'%'", _percent_made, left, right)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text, mapping = value.__self__, value.__name__ == "format_map"

        def counted(*args: Any, **kwargs: Any) -> str:
            given = args[0] if mapping and args else kwargs
            values = [*(() if mapping else args), *(given.values() if isinstance(given, Mapping) else ())]
            _estimated(repr(value.__name__), _format_made, text, values)
            return wrapped(*args, **kwargs)

        return counted


def _counted_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    _made(_int(n) * (_int(max) + 1) * 16, "'lipsum'")  # Jinja's words are under 15 characters
    return generate_lorem_ipsum(n, html, min, max)


class _Counting(NodeTransformer):
    """Every `for` loop's iterable passed through `_stepped` (so loops nested in loops, which touch
    nothing else, are counted) and every `~` made by `_joined_text` (so what it makes is counted)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _STEPPED, [], [], None, None, lineno=node.iter.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        parts = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(parts, _CONCAT, [], [], None, None, lineno=node.lineno)


def prepare(tree: nodes.Template) -> nodes.Template:
    """`tree` with its loops and `~` counted against the budget (`_Counting`)."""
    prepared = _Counting().visit(tree)
    assert isinstance(prepared, nodes.Template)
    return prepared
