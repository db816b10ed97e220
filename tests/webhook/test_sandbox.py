"""What one template rendering may make (`webhook.sandbox`): widths, repetition, shared items and
accumulation are refused before they are made, for the config's sample injection and for each pod.

Each table row took a gigabyte or more (or ran out of memory, or 10 s) on the sandbox alone; the
property composes the same operations at random and holds every rendering to a fixed memory peak.
"""

from __future__ import annotations

import tracemalloc
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webhook.test_templates import injector, params, pod
from webhook import sandbox
from webhook.config import ConfigError
from webhook.configparse import parse_injection_config
from webhook.inject import TemplateError, inject_pod


def refusal(source: str) -> tuple[ConfigError | None, int]:
    """What reading a config whose template `bad` is `source` raises, and the memory it took at most."""
    tracemalloc.start()
    try:
        try:
            parse_injection_config(injector=injector({"bad": source}), mesh=None)
        except ConfigError as exc:
            return exc, tracemalloc.get_traced_memory()[1]
        return None, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# Operations that make more than their inputs hold, each asked for a gigabyte or more.
MAKES_TOO_MUCH = {
    "center-filter": ("{{ 'x' | center(1000000000) }}", "filter 'center' would make 1,000,000,001 characters or items"),
    "width-method": ("{{ 'x'.zfill(1000000000) }}", "'zfill' would make 1,000,000,001 characters or items"),
    "percent-width": ("{{ '%1000000000d' % 1 }}", "'%' would make 1,000,000,014 characters or items"),
    "format-nested-width": (
        "{{ '{0:{1}}'.format('x', 1000000000) }}",
        "'format' would make 1,000,000,013 characters or items",
    ),
    "indent": ("{{ 'x' | indent(1000000000, true) }}", "filter 'indent' would make 1,000,000,001 characters or items"),
    "replace": (
        "{{ ('x' * 1000000) | replace('x', 'y' * 1000000) }}",
        "filter 'replace' would make 1,000,001,000,000 characters or items",
    ),
    "doubled-in-a-loop": (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "'~' would make 4,194,304 characters or items, 8,388,606 in this rendering",
    ),
    "kept-in-a-loop": (
        "{% set ns = namespace(l=[]) %}{% for i in range(2000) %}{% set ns.l = ns.l + [('x' * 1000000) ~ i] %}"
        "{% endfor %}",
        "8,000,014 in this rendering",
    ),
    "shared-items-printed": (
        "{% set a = ['x' * 100000] * 1000 %}{{ a }}",
        "printing a value would make 100,005,002 characters or items",
    ),
    "shared-items-as-json": (
        "{{ (['x' * 100000] * 1000) | tojson }}",
        "filter 'tojson' would make 100,005,002 characters or items",
    ),
    "shared-items-formatted": (
        "{{ '%s' % ([['x' * 100000] * 1000],) }}",
        "'%' would make over 8,000,000 characters or items",
    ),
    "join-separator": (
        "{{ (['x' * 1000] * 1000) | join(',' * 1000000) }}",
        "filter 'join' would make 1,001,000,000 characters or items",
    ),
    "sum-of-lists": ("{{ ([[1]] * 100000) | sum(start=[]) | length }}", "filter 'sum' would make"),
    "lipsum": ("{{ lipsum(1000000) }}", "'lipsum' would make 1,616,000,000 characters or items"),
    "to-bytes": (
        "{{ (1).to_bytes(1000000000, 'big') | length }}",
        "'to_bytes' would make 1,000,000,000 characters or items",
    ),
    "batch-fill": (
        "{{ [1] | batch(1000000000, 0) | list | length }}",
        "filter 'batch' would make 1,000,000,001 characters or items",
    ),
    "slices": (
        "{{ [] | slice(100000000) | list | length }}",
        "filter 'slice' would make 800,000,000 characters or items",
    ),
    "expandtabs": ("{{ 'a\\tb'.expandtabs(1000000000) }}", "'expandtabs' would make 1,000,000,003 characters or items"),
    "translate": (
        "{{ ('x' * 100).translate({120: 'z' * 1000000}) }}",
        "'translate' would make 100,000,100 characters or items",
    ),
    "wordwrap": (
        "{{ ('x' * 1000000) | wordwrap(1, true, 'y' * 1000000, true) }}",
        "filter 'wordwrap' would make 1,000,002,000,000 characters or items",
    ),
    "integer-squared-in-a-loop": (
        "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
        "'*' would make an integer of over 10,000 bits",
    ),
    "bytes-percent-width": ("{{ ('%1000000000d'.encode() % 1) | length }}", "'%' would make 1,000,000,014"),
    "printed-in-a-loop": (
        "{% set y = 'y' * 1000000 %}{% for i in range(3000) %}{{ y }}{% endfor %}",
        "renders 3,000,000,029 characters; a rendering may write at most 1,048,576",
    ),
}


@pytest.mark.parametrize(("expression", "problem"), MAKES_TOO_MUCH.values(), ids=MAKES_TOO_MUCH.keys())
def test_a_template_that_would_make_too_much_is_refused_before_making_it(expression: str, problem: str) -> None:
    """Jinja's sandbox bounds neither widths nor repetition: each of these took gigabytes (or ran out of
    memory) while the config was read, and the same from a pod's values would for that pod."""
    refused, peak = refusal(f'metadata:\n  labels:\n    a: "{expression}"\n')
    assert refused is not None
    assert "template 'bad'" in str(refused)
    assert problem in str(refused)
    assert peak < 64 * 1024 * 1024, f"{peak:,} bytes allocated before the refusal"


def test_a_width_taken_from_the_pod_refuses_that_pod_only() -> None:
    source = (
        "metadata:\n  labels:\n    pad: {{ 'x' | center(pod.metadata.annotations.get('width', '1') | int) | tojson }}\n"
    )
    config = parse_injection_config(injector=injector({"pad": source}, ["sidecar", "pad"]), mesh=None)
    with pytest.raises(TemplateError) as caught:
        inject_pod(pod(width="1000000000"), params(config))
    assert str(caught.value).startswith(
        "template 'pad' line 3: filter 'center' would make 1,000,000,001 characters or items"
    )
    assert inject_pod(pod(width="3"), params(config))["metadata"]["labels"]["pad"] == " x "


NUMBERS = st.sampled_from(["0", "2", "7", "1000", "100000", "1000000000"])
ATOMS = st.sampled_from(["'x'", "'ab\\tc'", "[1]", "ns.v", "7"])


def _combined(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    one = st.tuples(inner, NUMBERS).map(lambda t: t)
    two = st.tuples(inner, inner)
    return st.one_of(
        one.map(lambda t: f"({t[0]} * {t[1]})"),
        one.map(lambda t: f"({t[0]} | center({t[1]}))"),
        one.map(lambda t: f"({t[0]} | indent({t[1]}, true))"),
        one.map(lambda t: f"({t[0]} | batch({t[1]}, 0) | list)"),
        one.map(lambda t: f"({t[0]} | slice({t[1]}) | list)"),
        one.map(lambda t: f"('%{t[1]}s' % ({t[0]},))"),
        one.map(lambda t: f"('{{:{t[1]}}}'.format({t[0]}))"),
        one.map(lambda t: f"(({t[0]}) | string).ljust({t[1]})"),
        two.map(lambda t: f"({t[0]} ~ {t[1]})"),
        two.map(lambda t: f"({t[0]} + {t[1]})"),
        two.map(lambda t: f"[{t[0]}, {t[1]}]"),
        two.map(lambda t: f"({t[0]} | replace('x', {t[1]}))"),
        two.map(lambda t: f"({t[0]} | join({t[1]}))"),
        two.map(lambda t: f"({t[0]} | wordwrap(1, true, {t[1]}))"),
        two.map(lambda t: f"(({t[0]}) | string).replace('a', {t[1]})"),
        inner.map(lambda e: f"({e} | tojson)"),
        inner.map(lambda e: f"({e} | list)"),
        inner.map(lambda e: f"([{e}] | sum(start=[]))"),
    )


EXPRESSIONS = st.recursive(ATOMS, _combined, max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=EXPRESSIONS, step=EXPRESSIONS, rounds=st.sampled_from(["1", "3", "30"]))
def test_no_composition_of_these_operations_takes_more_than_a_fixed_peak(start: str, step: str, rounds: str) -> None:
    """A value is built, then rebuilt from itself in a loop, then printed: the config is read or
    refused, never a crash, and the memory it takes stays within a fixed multiple of `MAX_MADE` (here
    lowered, so that each example is quick)."""
    source = (
        f"{{% set ns = namespace(v=0) %}}{{% set ns.v = {start} %}}"
        f"{{% for i in range({rounds}) %}}{{% set ns.v = {step} %}}{{% endfor %}}\n"
        "metadata:\n  labels:\n    a: {{ ns.v | string | truncate(20) | tojson }}\n"
    )
    with mock.patch.object(sandbox, "MAX_MADE", 200_000), mock.patch.object(sandbox, "RENDER_BUDGET_S", 0.5):
        _, peak = refusal(source)
    assert peak < 2_000_000 + 16 * sandbox.MAX_MADE, f"{peak:,} bytes for {source!r}"
