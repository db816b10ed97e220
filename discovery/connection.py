"""Per-connection protocol state, and the pure decisions "should I respond to this request?".

`Watched` is what one stream knows about one type: the subscription, what was last sent (nonce,
version), what the client acknowledged, and the last rejection. It is immutable; the decision
functions return the next state, so they can be tested with a table of requests.

SotW rules (`should_respond`):
- a request carrying `error_detail` is a NACK: record it, do not respond (the client keeps its last
  good config; answering would loop);
- the first request for a type, or a request without a nonce (a reconnect), gets a response;
- a nonce other than the last one sent is stale: ignore the request;
- a matching nonce is an ACK: respond only if the subscribed names changed.

Delta rules (`should_respond_delta`): subscription changes are applied whatever the nonce; newly
subscribed names get a response; a NACK is recorded and not answered; an ACK updates the state.
"""

from __future__ import annotations

import enum
import sys
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from discovery.proxy import Proxy
from discovery.xdstypes import WILDCARD_TYPES


class Decision(enum.Enum):
    INITIAL = "initial request"
    RECONNECT = "reconnect"
    NAMES_CHANGED = "subscription changed"
    ACK = "ack"
    NACK = "nack"
    STALE = "stale nonce"

    @property
    def respond(self) -> bool:
        return self in (Decision.INITIAL, Decision.RECONNECT, Decision.NAMES_CHANGED)


def _empty_versions() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class Watched:
    type_url: str
    names: frozenset[str] = frozenset()
    wildcard: bool = False
    nonce_sent: str = ""
    version_sent: str = ""
    nonce_acked: str = ""
    version_acked: str = ""
    error: str | None = None  # the last NACK's message, until the next ACK
    nonce_nacked: str = ""
    sent_at: float | None = None
    acked_at: float | None = None
    known: Mapping[str, str] = field(default_factory=_empty_versions)  # Delta: name -> version the client has

    def sent(self, *, nonce: str, version: str, now: float) -> Watched:
        return replace(self, nonce_sent=nonce, version_sent=version, sent_at=now)


@dataclass(frozen=True, kw_only=True)
class SotwRequest:
    """The fields of a DiscoveryRequest that the decision reads."""

    type_url: str
    version_info: str = ""
    response_nonce: str = ""
    resource_names: tuple[str, ...] = ()
    error: str | None = None  # error_detail.message, or None when there is no error_detail


_CANONICAL: OrderedDict[frozenset[str], frozenset[str]] = OrderedDict()
_CANONICAL_LIMIT = 4096


def canonical(names: Iterable[str]) -> frozenset[str]:
    """One shared, interned frozenset per distinct subscription (memoized, LRU-bounded).

    A thousand proxies subscribed to the same thousand clusters then hold one set between them,
    and caches keyed by the subscription hit by identity."""
    key = frozenset(names)
    found = _CANONICAL.get(key)
    if found is not None:
        _CANONICAL.move_to_end(key)
        return found
    shared = frozenset(sys.intern(name) for name in key)
    _CANONICAL[shared] = shared
    while len(_CANONICAL) > _CANONICAL_LIMIT:
        _CANONICAL.popitem(last=False)
    return shared


def _subscription(type_url: str, names: Iterable[str]) -> tuple[frozenset[str], bool]:
    requested = frozenset(names)
    wildcard = type_url in WILDCARD_TYPES and (not requested or "*" in requested)
    return canonical(requested - {"*"}), wildcard


def should_respond(watched: Watched | None, request: SotwRequest, *, now: float) -> tuple[Decision, Watched]:
    """Decide on one SotW request; return the decision and the stream's next state for the type."""
    names, wildcard = _subscription(request.type_url, request.resource_names)
    if request.error is not None:
        base = watched or Watched(type_url=request.type_url, names=names, wildcard=wildcard)
        return Decision.NACK, replace(base, error=request.error, nonce_nacked=request.response_nonce)
    if watched is None:
        return Decision.INITIAL, Watched(type_url=request.type_url, names=names, wildcard=wildcard)
    if not request.response_nonce:
        return Decision.RECONNECT, replace(watched, names=names, wildcard=wildcard)
    if request.response_nonce != watched.nonce_sent:
        return Decision.STALE, watched
    acked = replace(
        watched,
        nonce_acked=request.response_nonce,
        version_acked=request.version_info,
        error=None,
        acked_at=now,
    )
    if names != watched.names or wildcard != watched.wildcard:
        return Decision.NAMES_CHANGED, replace(acked, names=names, wildcard=wildcard)
    return Decision.ACK, acked


@dataclass(frozen=True, kw_only=True)
class DeltaRequest:
    """The fields of a DeltaDiscoveryRequest that the decision reads."""

    type_url: str
    response_nonce: str = ""
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    initial_versions: Mapping[str, str] = field(default_factory=_empty_versions)
    error: str | None = None


def should_respond_delta(
    watched: Watched | None, request: DeltaRequest, *, now: float
) -> tuple[Decision, Watched, frozenset[str]]:
    """Decide on one Delta request: (decision, next state, names newly subscribed)."""
    subscribe = frozenset(request.subscribe)
    unsubscribe = frozenset(request.unsubscribe)
    if watched is None:
        names, wildcard = _subscription(request.type_url, request.subscribe)
        state = Watched(
            type_url=request.type_url,
            names=names,
            wildcard=wildcard,
            known=MappingProxyType(dict(request.initial_versions)),
        )
        if request.error is not None:
            return Decision.NACK, replace(state, error=request.error, nonce_nacked=request.response_nonce), frozenset()
        return Decision.INITIAL, state, names
    wildcard = (watched.wildcard or "*" in subscribe) and "*" not in unsubscribe
    names = canonical((watched.names | subscribe) - unsubscribe - {"*"})
    known = {k: v for k, v in watched.known.items() if k not in unsubscribe}
    added = names - watched.names
    state = replace(watched, names=names, wildcard=wildcard, known=MappingProxyType(known))
    if "*" in subscribe and not watched.wildcard:
        added = added | {"*"}
    if request.error is not None:
        return Decision.NACK, replace(state, error=request.error, nonce_nacked=request.response_nonce), frozenset()
    if request.response_nonce and request.response_nonce == watched.nonce_sent:
        state = replace(
            state, nonce_acked=request.response_nonce, version_acked=watched.version_sent, error=None, acked_at=now
        )
        return (Decision.NAMES_CHANGED if added else Decision.ACK), state, added
    if not request.response_nonce:
        return Decision.RECONNECT, state, added
    return (Decision.NAMES_CHANGED if added else Decision.STALE), state, added


class SyncStatus(enum.Enum):
    SYNCED = "SYNCED"
    NOT_SENT = "NOT SENT"
    STALE = "STALE"
    NACKED = "NACKED"


def sync_status(watched: Watched | None) -> SyncStatus:
    """Istio's proxy-status words for one type of one connection."""
    if watched is None or not watched.nonce_sent:
        return SyncStatus.NOT_SENT
    if watched.error is not None:
        return SyncStatus.NACKED
    if watched.nonce_acked == watched.nonce_sent:
        return SyncStatus.SYNCED
    return SyncStatus.STALE


@dataclass(kw_only=True)
class Connection:
    """One ADS stream: who is on it and what it was sent. Mutated only by its stream's task."""

    id: str
    proxy: Proxy
    peer: str
    connected_at: float  # wall-clock seconds
    delta: bool
    identity: str | None = None  # SPIFFE id of the client certificate on the secure port
    watched: dict[str, Watched] = field(default_factory=dict)
    pushes: int = 0
    nacks: int = 0

    def status(self) -> dict[str, SyncStatus]:
        return {type_url: sync_status(w) for type_url, w in self.watched.items()}
