"""The per-request warning recorder: what a request's answer carries as `Warning` headers.

Like the API server's recorder (a filter wraps every request with one, and admission, field
validation and the registry add to it), warnings are gathered for the whole request and sent on
its answer, whether it succeeds or fails: kubectl prints a webhook's warning even when the
request was then refused. A text is recorded once per request (the same text from two webhooks,
or from one webhook reinvoked, is one header) and an empty one not at all. The headers are
`299 - "text"`, one per warning, with `"` and `\\` escaped and everything else as it is; a text
that is not valid UTF-8 or has control characters cannot be a header and is dropped. Past 4096
characters in all, every warning is cut to 256 characters, and once that budget is spent again
the later ones are dropped, as the real recorder does.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator

TRUNCATE_AT_TOTAL = 4 * 1024  # characters of warning text an answer carries before truncation starts
TRUNCATE_ITEM = 256  # the length each warning is cut to once truncating


class Recorder:
    """The warnings of one request, each text once, in the order they were first added."""

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._seen: set[str] = set()

    def add(self, text: str) -> None:
        if not text or text in self._seen:
            return
        self._seen.add(text)
        self._texts.append(text)

    def extend(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.add(text)

    def __iter__(self) -> Iterator[str]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def headers(self) -> list[str]:
        """The `Warning` header values of the recorded texts."""
        return [header_value(text) for text in _truncated([t for t in self._texts if _can_be_header(t)])]


def header_value(text: str) -> str:
    """`299 - "text"`: code 299, no agent, the text quoted with `"` and `\\` escaped."""
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 - "{quoted}"'


def _can_be_header(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False  # a lone surrogate: not valid UTF-8
    return not any(unicodedata.category(c) == "Cc" for c in text)


def _truncated(texts: list[str]) -> list[str]:
    """The texts as the recorder writes them: all of them while they fit, else cut and, past the budget, dropped.

    The recorder adds each warning as it comes; the first one that would pass the total switches it
    to truncating, which rewrites every warning so far cut to TRUNCATE_ITEM characters and counts
    again from zero; from then on each new warning is cut too, and once the count reaches the total
    nothing more is added.
    """
    written = 0
    truncating = False
    out: list[str] = []
    for i, text in enumerate(texts):
        if truncating and written >= TRUNCATE_AT_TOTAL:
            break
        kept = text[:TRUNCATE_ITEM] if truncating else text
        if written + len(kept) <= TRUNCATE_AT_TOTAL or truncating:
            written += len(kept)
            out.append(kept)
            continue
        truncating = True
        out = [t[:TRUNCATE_ITEM] for t in texts[: i + 1]]
        written = sum(len(t) for t in out)
    return out
