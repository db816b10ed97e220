"""Message types that read only part of another's wire form, for parsing at a bounded cost.

The protobuf runtime parses a map field in time that grows with the square of its entries when
they arrive in the order of its own hash table, as it writes them (a map of 400,000 entries: 0.5 s;
a `google.protobuf.Struct` of 700,000 fields: 3.6 s). A server that parses
what an unauthenticated client sends must not parse such fields blindly. `peek_type(real, fields,
raw=...)` builds a type with `real`'s numbers and labels for `fields`: those in `raw` (maps and
messages) as bytes, which parse in linear time and can be measured before anything parses them,
the others (scalars) as in `real`. Every other field of `real` is left unparsed (kept as unknown
bytes).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

_Field = descriptor_pb2.FieldDescriptorProto


def peek_type(real: type[Message], fields: Iterable[str], *, raw: Collection[str] = ()) -> Any:
    """A message type reading `fields` of `real` (those in `raw` as bytes); ValueError for a message
    or map field not in `raw`."""
    descriptor = real.DESCRIPTOR
    name = descriptor.name + "Peek"
    file = descriptor_pb2.FileDescriptorProto(
        name=f"meshplane/peek/{descriptor.full_name}.proto", package="meshplane.peek", syntax="proto3"
    )
    peek = file.message_type.add(name=name)
    for field_name in fields:
        field = descriptor.fields_by_name[field_name]
        if field_name in raw:
            kind = _Field.TYPE_BYTES
        elif field.message_type is None and field.enum_type is None:
            kind = _Field.Type.ValueType(field.type)  # FieldDescriptor.TYPE_* are the proto's numbers
        else:
            raise ValueError(f"{descriptor.full_name}.{field_name} is a message, map or enum: read it raw")
        label = _Field.LABEL_REPEATED if field.is_repeated else _Field.LABEL_OPTIONAL
        peek.field.add(name=field_name, number=field.number, type=kind, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"meshplane.peek.{name}"))
