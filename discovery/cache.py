"""Generated resources, serialized once and shared by every proxy with the same view.

A `Resource` holds one xDS resource already encoded as a `google.protobuf.Any`, plus its encoding
as a `resources` field of a `DiscoveryResponse`. Protobuf messages may be concatenated field by
field, so a response is the concatenation of cached resource fields and a few bytes of per-stream
header (version, type, nonce): nothing is serialized twice, whatever the number of proxies.
`ResourceGroup` goes one step further and keeps the joined bytes of a list of resources that many
proxies receive together (all outbound clusters, say).

`XdsCache` keys each resource by (type, name, variant) and remembers the inputs it was built from
(`key`); a lookup with the same key is a hit, a different key rebuilds. Both maps are LRU-bounded
by entry count and by approximate bytes (serialized sizes plus a per-entry and per-name estimate
of what Python adds, keys included), so resources of deleted services, and of names a client made
up, age out and the cache never holds much more than its byte budget.

A group is worth keeping only when more than one stream asks for it: a subscription no other
proxy shares (a client's own list of names) would otherwise take a cache entry per change and fill
the byte budget with groups nobody asks for again. So a group is kept from the second time its key
is asked for; the first time only the key's hash is remembered (a bounded set). And groups are
keyed by the model versions they were built from, so every model change leaves a generation nobody
will ask for again: `advance(version)`, called on each model change, drops the groups used in
neither the new version's time nor the one before (a push still running on the previous snapshot
keeps its groups). The cache holds what the last two model versions shared, not the last 128 MiB
of history.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message


def varint(value: int) -> bytes:
    """A non-negative integer in protobuf's varint encoding."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def field(tag: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2) with a one-byte tag."""
    size = len(payload)
    if size < 0x80:
        return bytes((tag, size)) + payload
    return bytes((tag,)) + varint(size) + payload


# Tags (field number << 3 | wire type 2) of the fields we encode by hand.
_ANY_TYPE_URL = 0x0A  # Any.type_url = 1
_ANY_VALUE = 0x12  # Any.value = 2
_RESPONSE_RESOURCES = 0x12  # DiscoveryResponse.resources = 2, DeltaDiscoveryResponse.resources = 2
_DELTA_NAME = 0x1A  # Resource.name = 3
_DELTA_VERSION = 0x0A  # Resource.version = 1
_DELTA_RESOURCE = 0x12  # Resource.resource = 2


class Resource:
    """One serialized resource. `version` is a digest of its bytes, stable across restarts."""

    __slots__ = ("_delta_field", "any_bytes", "name", "sotw_field", "type_url", "version")

    def __init__(self, *, type_url: str, name: str, message: Message | bytes) -> None:
        """`message`: the resource, or its bytes as `SerializeToString(deterministic=True)` gives them."""
        value = message if isinstance(message, bytes) else message.SerializeToString(deterministic=True)
        self.type_url = type_url
        self.name = name
        self.any_bytes = field(_ANY_TYPE_URL, type_url.encode()) + field(_ANY_VALUE, value)
        self.version = hashlib.blake2b(self.any_bytes, digest_size=8).hexdigest()
        self.sotw_field = field(_RESPONSE_RESOURCES, self.any_bytes)
        self._delta_field: bytes | None = None

    @property
    def delta_field(self) -> bytes:
        """This resource as a `resources` field of a `DeltaDiscoveryResponse`."""
        if self._delta_field is None:
            body = (
                field(_DELTA_NAME, self.name.encode())
                + field(_DELTA_VERSION, self.version.encode())
                + field(_DELTA_RESOURCE, self.any_bytes)
            )
            self._delta_field = field(_RESPONSE_RESOURCES, body)
        return self._delta_field

    def __len__(self) -> int:
        return len(self.any_bytes)

    def to_any(self) -> any_pb2.Any:
        return any_pb2.Any.FromString(self.any_bytes)

    def __repr__(self) -> str:
        return f"Resource({self.name!r}, version={self.version})"


class ResourceGroup:
    """Resources sent together, with their `DiscoveryResponse` field bytes joined once."""

    __slots__ = ("_digest", "blob", "resources")

    def __init__(self, resources: Sequence[Resource]) -> None:
        self.resources = tuple(resources)
        self.blob = b"".join(r.sotw_field for r in self.resources)
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        """A digest of the group's names and resource versions: equal digests, equal content."""
        if self._digest is None:
            joined = "\n".join(f"{r.name} {r.version}" for r in self.resources)
            self._digest = hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()
        return self._digest

    def __len__(self) -> int:
        return len(self.resources)


EMPTY_GROUP = ResourceGroup(())


_ENTRY_OVERHEAD = 200  # an OrderedDict entry, its key tuple and the objects around the bytes
_REFERENCE = 8


def _key_bytes(key: object) -> int:
    """Approximate memory of a cache key: strings and the containers (tuples, frozensets) holding them."""
    if isinstance(key, str | bytes):
        return len(key) + 50
    if isinstance(key, tuple | frozenset):
        return 56 + sum(_REFERENCE * 2 + _key_bytes(item) for item in key)
    return 32


def _resource_bytes(resource: Resource) -> int:
    # any_bytes, sotw_field and (once a Delta stream asked) delta_field each hold the serialized resource.
    return 3 * len(resource.any_bytes) + 2 * len(resource.name) + _ENTRY_OVERHEAD


def _group_bytes(key: Hashable, group: ResourceGroup) -> int:
    return len(group.blob) + (_REFERENCE + 64) * len(group.resources) + _key_bytes(key) + _ENTRY_OVERHEAD


class XdsCache:
    """LRU maps of built resources and groups, each bounded by entries and by approximate bytes.

    Not thread-safe; one per event loop. An entry larger than the whole byte budget is returned to
    its caller and not kept."""

    def __init__(
        self,
        *,
        max_resources: int = 200_000,
        max_groups: int = 4_096,
        max_resource_bytes: int = 128 * 1024 * 1024,
        max_group_bytes: int = 128 * 1024 * 1024,
    ) -> None:
        self.max_resources = max_resources
        self.max_groups = max_groups
        self.max_resource_bytes = max_resource_bytes
        self.max_group_bytes = max_group_bytes
        self._resources: OrderedDict[tuple[str, str, Hashable], tuple[Hashable, Resource, int]] = OrderedDict()
        # key -> (group, approximate bytes, the model version when it was last used); least recently
        # used first, so the last-used versions never decrease along the order.
        self._groups: OrderedDict[Hashable, tuple[ResourceGroup, int, int]] = OrderedDict()
        self.resource_bytes = 0
        self.group_bytes = 0
        self.hits = 0
        self.misses = 0
        self._asked_once: OrderedDict[int, None] = OrderedDict()  # hashes of group keys built once, not kept
        self.max_asked_once = 4 * max_groups
        self.version = 0  # the latest model version `advance` was told of
        self._previous = 0  # the one before it: groups last used before this are dropped
        self.retired = 0  # groups dropped by `advance`

    def resource(
        self,
        type_url: str,
        name: str,
        *,
        key: Hashable,
        build: Callable[[], Message | bytes],
        variant: Hashable = None,
    ) -> Resource:
        """The resource built from inputs `key`; `build()` runs only when the key changed."""
        slot = (type_url, name, variant)
        entry = self._resources.get(slot)
        if entry is not None and entry[0] == key:
            self.hits += 1
            self._resources.move_to_end(slot)
            return entry[1]
        self.misses += 1
        resource = Resource(type_url=type_url, name=name, message=build())
        if entry is not None:
            self.resource_bytes -= entry[2]
        size = _resource_bytes(resource) + _key_bytes(key)
        self._resources[slot] = (key, resource, size)
        self._resources.move_to_end(slot)
        self.resource_bytes += size
        while self._resources and (
            len(self._resources) > self.max_resources or self.resource_bytes > self.max_resource_bytes
        ):
            self.resource_bytes -= self._resources.popitem(last=False)[1][2]
        return resource

    def kept_group(self, key: Hashable) -> ResourceGroup | None:
        """The group kept for `key` (a hit, as in `group`), or None: nothing is built."""
        found = self._groups.get(key)
        if found is None:
            return None
        self.hits += 1
        self._groups[key] = (found[0], found[1], self.version)
        self._groups.move_to_end(key)
        return found[0]

    def group(self, key: Hashable, build: Callable[[], Sequence[Resource]]) -> ResourceGroup:
        """The group for `key`, building (and joining) it on a miss; kept from the second time `key` is asked for."""
        found = self.kept_group(key)
        if found is not None:
            return found
        self.misses += 1
        group = ResourceGroup(build())
        asked = hash(key)
        if asked not in self._asked_once:  # the first time: remember the key, keep the group only if asked again
            self._asked_once[asked] = None
            if len(self._asked_once) > self.max_asked_once:
                self._asked_once.popitem(last=False)
            return group
        del self._asked_once[asked]
        size = _group_bytes(key, group)
        self._groups[key] = (group, size, self.version)
        self.group_bytes += size
        while self._groups and (len(self._groups) > self.max_groups or self.group_bytes > self.max_group_bytes):
            self.group_bytes -= self._groups.popitem(last=False)[1][1]
        return group

    def advance(self, version: int) -> None:
        """The model moved to `version`: drop the groups last used before the previous version."""
        if version <= self.version:
            return
        self._previous, self.version = self.version, version
        while self._groups:
            key, (_, size, used) = next(iter(self._groups.items()))
            if used >= self._previous:
                break
            del self._groups[key]
            self.group_bytes -= size
            self.retired += 1

    def stats(self) -> dict[str, Any]:
        return {
            "resources": len(self._resources),
            "groups": len(self._groups),
            "resource_bytes": self.resource_bytes,
            "group_bytes": self.group_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "retired": self.retired,
        }

    def clear(self) -> None:
        self._resources.clear()
        self._groups.clear()
        self._asked_once.clear()
        self.resource_bytes = self.group_bytes = 0
