"""Protobuf wire form for hostile requests: fields no message type would carry, maps in their slowest order."""

from __future__ import annotations

from google.protobuf import struct_pb2


def length_delimited(field: int, payload: bytes) -> bytes:
    """`payload` as protobuf field `field` (wire type 2)."""
    header, length = bytearray([field << 3 | 2]), len(payload)
    while length >= 0x80:
        header.append(length & 0x7F | 0x80)
        length >>= 7
    header.append(length)
    return bytes(header) + payload


def struct_of(count: int) -> bytes:
    """A serialized `google.protobuf.Struct` of `count` string fields (`k<i>: "v"`), in the map's own
    iteration order: inserting keys in a hash table's order is what makes parsing them slowest."""
    struct = struct_pb2.Struct()
    for i in range(count):
        struct.fields[f"k{i}"].string_value = "v"
    return struct.SerializeToString()
