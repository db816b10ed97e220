"""A bounded memory of bearer tokens whose signature has already been checked.

Checking an ES256 token's signature is the costliest step of authenticating a CA request, and an
agent presents the same token for every request until it rotates it. The cache maps a token (the
whole string, so any edited byte misses) to what its verification concluded: the caller and the
token's time window. A hit is only a hit while that window holds (`exp` not reached, `nbf` less
the allowed skew passed); outside it the entry is dropped and the caller verifies again, so an
expired token gets exactly the refusal an uncached one gets.

Every entry is bound to the key that verified it: `lookup(..., key=k)` with another key than the
one the cache was filled with empties it first, so replacing the token key refuses every token the
old key signed from the next request on.

Bounded by entries and by bytes (each entry is charged its token's length plus a fixed overhead);
the least recently used entries go first. Only successful verifications are stored: forged or
malformed tokens never take room. Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from certs.authenticate import Caller

MAX_ENTRIES = 4096
MAX_BYTES = 4 * 1024 * 1024
#: Charged per entry on top of the token's length: the entry, its caller and the dictionary slot.
ENTRY_OVERHEAD = 256


@dataclass(frozen=True, kw_only=True, slots=True)
class VerifiedToken:
    """What checking a token concluded: who it names and when it is valid (Unix seconds)."""

    caller: Caller
    expires: float  # `exp`: refused from this instant on
    not_before: float  # `nbf` (or `iat`) less the allowed clock skew; -inf when the token has neither


class TokenCache:
    def __init__(self, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        """Raises ValueError unless both bounds are positive."""
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"token cache bounds must be positive (entries {max_entries}, bytes {max_bytes})")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, VerifiedToken] = OrderedDict()
        self._bytes = 0
        self._key: object = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """What the entries are charged in total (never above `max_bytes`)."""
        return self._bytes

    def lookup(self, token: str, *, key: object, now: float) -> Caller | None:
        """The cached caller of `token` if `key` verified it and it is valid at `now`; else None
        (an entry out of its window is dropped; a different `key` empties the cache)."""
        if key is not self._key:
            self.clear()
            self._key = key
            return None
        entry = self._entries.get(token)
        if entry is None:
            return None
        if not entry.not_before <= now < entry.expires:
            self._drop(token)
            return None
        self._entries.move_to_end(token)
        return entry.caller

    def store(self, token: str, entry: VerifiedToken, *, key: object) -> None:
        """Remember that `key` verified `token`, evicting the least recently used entries to stay in bounds.
        A token too large for `max_bytes` on its own is not stored."""
        if key is not self._key:
            self.clear()
            self._key = key
        cost = len(token) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        if token in self._entries:
            self._drop(token)
        while self._entries and (len(self._entries) >= self.max_entries or self._bytes + cost > self.max_bytes):
            self._drop(next(iter(self._entries)))
        self._entries[token] = entry
        self._bytes += cost

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, token: str) -> None:
        del self._entries[token]
        self._bytes -= len(token) + ENTRY_OVERHEAD
