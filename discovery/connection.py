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

`StreamLimits` says how much one client may make a stream hold; `LogThrottle` keeps a misbehaving
client from flooding the log.
"""

from __future__ import annotations

import enum
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
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


NO_VERSIONS: Mapping[str, str] = MappingProxyType({})  # shared: thousands of streams hold an empty one per type


def _empty_versions() -> Mapping[str, str]:
    return NO_VERSIONS


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
    known: Mapping[str, str] = field(default_factory=_empty_versions)  # Delta: name -> version the client has
    content: tuple[str, ...] = ()  # SotW wildcard types: the group digests of the last complete response

    def sent(self, *, nonce: str, version: str, content: tuple[str, ...] = ()) -> Watched:
        return replace(self, nonce_sent=nonce, version_sent=version, content=content)


@dataclass(frozen=True, kw_only=True)
class SotwRequest:
    """The fields of a DiscoveryRequest that the decision reads."""

    type_url: str
    version_info: str = ""
    response_nonce: str = ""
    resource_names: tuple[str, ...] = ()
    error: str | None = None  # error_detail.message, or None when there is no error_detail


# What work on a request's names costs, in `TurnBudget` units of ~2.5 us: generating a response costs
# about one unit per name (a 10,000-name EDS request takes ~25 ms) plus a base; reading the names
# (into the stream's subscription, to see whether anything is to be sent) one unit per 8 names. A
# turn of the event loop starts up to REQUEST_UNITS_PER_TURN of them (~10 ms), one larger piece alone.
# Building a resource the cache does not hold costs several times that (10,000 endpoint assignments:
# ~100 ms), so a large answer is generated in pieces of PIECE_NAMES names, each taking its turn, and
# each piece after the first costs the most a piece before it took (`units_of`).
UNIT_SECONDS = 2.5e-6
REQUEST_BASE_UNITS = 50
READ_NAMES_PER_UNIT = 8
REQUEST_UNITS_PER_TURN = 4_000
PIECE_NAMES = 1_000


def reading(names: int) -> int:
    """Units for reading `names` resource names of a request."""
    return names // READ_NAMES_PER_UNIT


def generating(names: int) -> int:
    """Units for generating the resources `names` names ask for (none for none: wildcard responses
    are shared by every proxy with the same view, and come from the cache)."""
    return REQUEST_BASE_UNITS + names if names else 0


def units_of(seconds: float) -> int:
    """The units of work that took `seconds`."""
    return int(seconds / UNIT_SECONDS)


@dataclass(frozen=True, kw_only=True)
class StreamLimits:
    """What one client may make a stream hold; over a limit the stream ends with a precise status.

    `names_per_request`: resource names in one request (SotW `resource_names`; Delta
    `resource_names_subscribe` + `resource_names_unsubscribe` + `initial_resource_versions`).
    `names_per_stream`: subscribed names over all types of one stream. Both: RESOURCE_EXHAUSTED.
    `node_metadata_bytes` / `node_id_bytes`: serialized size of `node.metadata` / length of `node.id`
    in the first request: INVALID_ARGUMENT. `streams_per_client`: streams one client
    address may have open at once, both ports together (`discovery.clients`): RESOURCE_EXHAUSTED.
    """

    names_per_request: int = 10_000
    names_per_stream: int = 10_000
    streams_per_client: int = 100
    node_metadata_bytes: int = 64 * 1024
    node_id_bytes: int = 1024


class LogThrottle:
    """At most one log line per key every `interval` seconds, counting the lines held back.

    Keys come from a closed set (a type URL the stream serves, or a fixed word), so the table stays small.
    """

    def __init__(self, *, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None if the line must be dropped; else how many lines of `key` were dropped since the last one."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)

    def held(self) -> int:
        """Lines dropped and not yet reported by a later line."""
        return sum(self._held.values())


# Subscriptions shared while something uses them: hash -> weak references to the shared sets.
_SHARED: dict[int, list[weakref.ref[frozenset[str]]]] = {}


def canonical(names: Iterable[str]) -> frozenset[str]:
    """One shared frozenset per distinct subscription in use.

    A thousand proxies subscribed to the same thousand clusters then hold one set between them, and
    caches keyed by the subscription hit by identity. The table holds the sets weakly: once no stream
    (or cache entry) uses a subscription, it is freed. Names are not `sys.intern`ed: the interpreter's
    table of interned strings never shrinks, so clients could grow it with names they make up."""
    key = frozenset(names)
    digest = hash(key)
    bucket = _SHARED.get(digest)
    for ref in bucket or ():
        found = ref()
        if found is not None and found == key:
            return found

    def forget(ref: weakref.ref[frozenset[str]]) -> None:
        alive = [other for other in _SHARED.get(digest, ()) if other is not ref]
        if alive:
            _SHARED[digest] = alive
        else:
            _SHARED.pop(digest, None)

    _SHARED.setdefault(digest, []).append(weakref.ref(key, forget))
    return key


def shared_subscriptions() -> int:
    """How many subscriptions are shared now (for debugging and tests)."""
    return sum(1 for refs in _SHARED.values() for ref in refs if ref() is not None)


def _subscription(type_url: str, names: Iterable[str]) -> tuple[frozenset[str], bool]:
    requested = frozenset(names)
    wildcard = type_url in WILDCARD_TYPES and (not requested or "*" in requested)
    return canonical(requested - {"*"}), wildcard


def should_respond(watched: Watched | None, request: SotwRequest) -> tuple[Decision, Watched]:
    """Decide on one SotW request; return the decision and the stream's next state for the type."""
    names, wildcard = _subscription(request.type_url, request.resource_names)
    if request.error is not None:
        base = watched or Watched(type_url=request.type_url, names=names, wildcard=wildcard)
        return Decision.NACK, replace(base, error=request.error)
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


def should_respond_delta(watched: Watched | None, request: DeltaRequest) -> tuple[Decision, Watched, frozenset[str]]:
    """Decide on one Delta request: (decision, next state, names newly subscribed)."""
    subscribe = frozenset(request.subscribe)
    unsubscribe = frozenset(request.unsubscribe)
    if watched is None:
        names, wildcard = _subscription(request.type_url, request.subscribe)
        state = Watched(
            type_url=request.type_url,
            names=names,
            wildcard=wildcard,
            known=MappingProxyType(dict(request.initial_versions)) if request.initial_versions else NO_VERSIONS,
        )
        if request.error is not None:
            return Decision.NACK, replace(state, error=request.error), frozenset()
        return Decision.INITIAL, state, names
    wildcard = (watched.wildcard or "*" in subscribe) and "*" not in unsubscribe
    names = canonical((watched.names | subscribe) - unsubscribe - {"*"})
    known = watched.known  # kept as it is unless names leave it: streams in the same state share it
    if unsubscribe and not unsubscribe.isdisjoint(known):
        known = MappingProxyType({k: v for k, v in known.items() if k not in unsubscribe})
    added = names - watched.names
    state = replace(watched, names=names, wildcard=wildcard, known=known)
    if "*" in subscribe and not watched.wildcard:
        added = added | {"*"}
    if request.error is not None:
        return Decision.NACK, replace(state, error=request.error), frozenset()
    if request.response_nonce and request.response_nonce == watched.nonce_sent:
        state = replace(state, nonce_acked=request.response_nonce, version_acked=watched.version_sent, error=None)
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
    throttle: LogThrottle | None = None  # repeated warnings about this stream, from the first (`warnings`)

    def warnings(self) -> LogThrottle:
        """The stream's log throttle, made when it first warns (most streams never do)."""
        if self.throttle is None:
            self.throttle = LogThrottle()
        return self.throttle

    def status(self) -> dict[str, SyncStatus]:
        return {type_url: sync_status(w) for type_url, w in self.watched.items()}
