"""Reading ADS requests off the wire at a cost the limits bound, before they are parsed.

The protobuf runtime parses a map field in time that grows with the square of its entries
(`controlplane.protopeek`): a DeltaDiscoveryRequest of 6 MB whose `initial_resource_versions` holds
400,000 entries takes 0.5 s to parse, a node whose metadata has 700,000 fields (11 MB, under gRPC's
16 MiB message limit) 3.6 s, all on the event loop and before any check of the stream could look.
So a request is first read as a *peek*, in which every field that can hold a map (the node, the
resource locators, the initial versions) and every name is raw bytes, which parses in linear time.
Only a request within these limits is then parsed for real:

- `node`: at most `NODE_BYTES` serialized (INVALID_ARGUMENT); the stream then checks its id and
  metadata (`StreamLimits`);
- resource names: SotW `resource_names`, Delta `resource_names_subscribe` +
  `resource_names_unsubscribe` + `initial_resource_versions`, together at most
  `StreamLimits.names_per_request` (RESOURCE_EXHAUSTED);
- resource locators (meshplane serves none): at most `names_per_request` in a request
  (RESOURCE_EXHAUSTED), each at most `LOCATOR_BYTES` serialized (INVALID_ARGUMENT).

A request over a limit is not parsed: `RequestReader` returns the `StreamRefused` the stream ends
with, in the place of the request (a gRPC deserializer cannot choose the status itself); so does
a request that is no valid message (INVALID_ARGUMENT, rather than gRPC's UNKNOWN).
"""

from __future__ import annotations

from typing import Generic, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from controlplane.protopeek import peek_type
from discovery.connection import StreamLimits
from discovery.stream import StreamRefused

M = TypeVar("M", bound=Message)

NODE_BYTES = 1024 * 1024  # Envoy 1.3x sends its node, with every extension it was built with, in ~60 KB
LOCATOR_BYTES = 16 * 1024

# For each request type: the fields whose entries are resource names, and those holding locators.
_NAMES = {
    "envoy.service.discovery.v3.DiscoveryRequest": ("resource_names",),
    "envoy.service.discovery.v3.DeltaDiscoveryRequest": (
        "resource_names_subscribe",
        "resource_names_unsubscribe",
        "initial_resource_versions",
    ),
}
_LOCATORS = {
    "envoy.service.discovery.v3.DiscoveryRequest": ("resource_locators",),
    "envoy.service.discovery.v3.DeltaDiscoveryRequest": (
        "resource_locators_subscribe",
        "resource_locators_unsubscribe",
    ),
}


class RequestReader(Generic[M]):
    """The gRPC `request_deserializer` for one ADS request type: the parsed request, or the
    `StreamRefused` it earns when it is over a limit (then it is never parsed)."""

    def __init__(self, message: type[M], limits: StreamLimits) -> None:
        full_name = message.DESCRIPTOR.full_name
        self.message = message
        self.limits = limits
        self._names = _NAMES[full_name]
        self._locators = _LOCATORS[full_name]
        raw = ("node", *self._names, *self._locators)
        self._peek = peek_type(message, raw, raw=raw)
        name = message.DESCRIPTOR.name
        self._names_label = f"{name}.{self._names[0]}" if len(self._names) == 1 else f"{name} {_listed(self._names)}"

    def __call__(self, data: bytes) -> M | StreamRefused:
        try:
            return self._read(data)
        except DecodeError as exc:
            return StreamRefused(
                grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a {self.message.DESCRIPTOR.name}: {exc}"
            )

    def _read(self, data: bytes) -> M | StreamRefused:
        peek = self._peek.FromString(data)
        if len(peek.node) > NODE_BYTES:
            return StreamRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node is {len(peek.node)} bytes serialized; the limit is {NODE_BYTES} bytes",
            )
        names = sum(len(getattr(peek, field)) for field in self._names)
        if names > self.limits.names_per_request:
            return StreamRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._names_label}: {names} names in one request, over the limit of "
                f"{self.limits.names_per_request}; subscribe in smaller requests",
            )
        for field in self._locators:
            locators = getattr(peek, field)
            if len(locators) > self.limits.names_per_request:
                return StreamRefused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{field}: {len(locators)} locators in one request, over the limit of "
                    f"{self.limits.names_per_request}",
                )
            for index, locator in enumerate(locators):
                if len(locator) > LOCATOR_BYTES:
                    return StreamRefused(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{field}[{index}] is {len(locator)} bytes serialized; the limit is {LOCATOR_BYTES} bytes",
                    )
        return self.message.FromString(data)


def _listed(fields: tuple[str, ...]) -> str:
    """`a`, `a and b`, `a, b and c`: the fields as the refusal names them."""
    return fields[0] if len(fields) == 1 else f"{', '.join(fields[:-1])} and {fields[-1]}"
