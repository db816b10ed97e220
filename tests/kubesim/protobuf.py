"""Decoding the protobuf request bodies kubectl's typed commands send (`kubectl create namespace|deployment`).

The wire form is the 4-byte magic `k8s\\0` and a `runtime.Unknown` message (field 1 TypeMeta with
apiVersion=1, kind=2; field 2 the raw object message; 3 contentEncoding; 4 contentType). The object
messages are decoded with the field numbers of the Kubernetes API's `generated.proto` for the
kinds below; any other kind, or a field number not listed, raises `ProtobufError` (the server
answers 415) rather than being guessed at. Empty strings and zero numbers are what the encoder
writes for unset fields, so they are dropped.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    pass


Field = tuple[str, str]  # (JSON name, type)

TIME: dict[int, Field] = {1: ("seconds", "int"), 2: ("nanos", "int")}
OWNER_REFERENCE: dict[int, Field] = {
    1: ("kind", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    5: ("apiVersion", "string"),
    6: ("controller", "bool"),
    7: ("blockOwnerDeletion", "bool"),
}
OBJECT_REFERENCE: dict[int, Field] = {
    1: ("kind", "string"),
    2: ("namespace", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    5: ("apiVersion", "string"),
    6: ("resourceVersion", "string"),
    7: ("fieldPath", "string"),
}
LOCAL_OBJECT_REFERENCE: dict[int, Field] = {1: ("name", "string")}
OBJECT_META: dict[int, Field] = {
    1: ("name", "string"),
    2: ("generateName", "string"),
    3: ("namespace", "string"),
    4: ("selfLink", "string"),
    5: ("uid", "string"),
    6: ("resourceVersion", "string"),
    7: ("generation", "int"),
    8: ("creationTimestamp", "time"),
    9: ("deletionTimestamp", "time"),
    10: ("deletionGracePeriodSeconds", "int"),
    11: ("labels", "map:string"),
    12: ("annotations", "map:string"),
    13: ("ownerReferences", "repeated:OwnerReference"),
    14: ("finalizers", "repeated:string"),
    17: ("managedFields", "skip"),
}
SCHEMAS: dict[str, dict[int, Field]] = {
    "Time": TIME,
    "ObjectMeta": OBJECT_META,
    "OwnerReference": OWNER_REFERENCE,
    "ObjectReference": OBJECT_REFERENCE,
    "LocalObjectReference": LOCAL_OBJECT_REFERENCE,
    "NamespaceSpec": {1: ("finalizers", "repeated:string")},
    "NamespaceStatus": {1: ("phase", "string"), 2: ("conditions", "skip")},
    "Namespace": {
        1: ("metadata", "message:ObjectMeta"),
        2: ("spec", "message:NamespaceSpec"),
        3: ("status", "message:NamespaceStatus"),
    },
    "ConfigMap": {
        1: ("metadata", "message:ObjectMeta"),
        2: ("data", "map:string"),
        3: ("binaryData", "map:bytes"),
        4: ("immutable", "bool"),
    },
    "Secret": {
        1: ("metadata", "message:ObjectMeta"),
        2: ("data", "map:bytes"),
        3: ("type", "string"),
        4: ("stringData", "map:string"),
        5: ("immutable", "bool"),
    },
    "ServiceAccount": {
        1: ("metadata", "message:ObjectMeta"),
        2: ("secrets", "repeated:ObjectReference"),
        3: ("imagePullSecrets", "repeated:LocalObjectReference"),
        4: ("automountServiceAccountToken", "bool"),
    },
    # authentication.k8s.io/v1 (`kubectl create token`)
    "BoundObjectReference": {
        1: ("kind", "string"),
        2: ("apiVersion", "string"),
        3: ("name", "string"),
        4: ("uid", "string"),
    },
    "TokenRequestSpec": {
        1: ("audiences", "repeated:string"),
        3: ("boundObjectRef", "message:BoundObjectReference"),
        4: ("expirationSeconds", "int"),
    },
    "TokenRequestStatus": {1: ("token", "string"), 2: ("expirationTimestamp", "time")},
    "TokenRequest": {
        1: ("metadata", "message:ObjectMeta"),
        2: ("spec", "message:TokenRequestSpec"),
        3: ("status", "message:TokenRequestStatus"),
    },
    "Preconditions": {1: ("uid", "string"), 2: ("resourceVersion", "string")},
    "DeleteOptions": {  # what client-go's typed clients (helm's release storage) send with a DELETE
        1: ("gracePeriodSeconds", "optint"),
        2: ("preconditions", "message:Preconditions"),
        3: ("orphanDependents", "bool"),
        4: ("propagationPolicy", "string"),
        5: ("dryRun", "repeated:string"),
        6: ("ignoreStoreReadErrorWithClusterBreakingPotential", "bool"),
    },
}
# apps/v1 workloads (`kubectl create deployment`) and the pod template they carry. Types: `int` is a
# plain number (0 = unset, dropped), `optint` a pointer (0 kept: `replicas: 0`), `bool` a pointer
# (false kept), `flag` a plain bool (false dropped), as Kubernetes' JSON encoding does.
SCHEMAS.update(
    {
        "LabelSelectorRequirement": {
            1: ("key", "string"),
            2: ("operator", "string"),
            3: ("values", "repeated:string"),
        },
        "LabelSelector": {
            1: ("matchLabels", "map:string"),
            2: ("matchExpressions", "repeated:LabelSelectorRequirement"),
        },
        "ContainerPort": {
            1: ("name", "string"),
            2: ("hostPort", "int"),
            3: ("containerPort", "int"),
            4: ("protocol", "string"),
            5: ("hostIP", "string"),
        },
        "EnvVar": {1: ("name", "string"), 2: ("value", "string")},
        "ResourceClaim": {1: ("name", "string"), 2: ("request", "string")},
        "ResourceRequirements": {
            1: ("limits", "map:quantity"),
            2: ("requests", "map:quantity"),
            3: ("claims", "repeated:ResourceClaim"),
        },
        "VolumeMount": {
            1: ("name", "string"),
            2: ("readOnly", "flag"),
            3: ("mountPath", "string"),
            4: ("subPath", "string"),
            5: ("mountPropagation", "string"),
            6: ("subPathExpr", "string"),
            7: ("recursiveReadOnly", "string"),
        },
        "Container": {
            1: ("name", "string"),
            2: ("image", "string"),
            3: ("command", "repeated:string"),
            4: ("args", "repeated:string"),
            5: ("workingDir", "string"),
            6: ("ports", "repeated:ContainerPort"),
            7: ("env", "repeated:EnvVar"),
            8: ("resources", "message:ResourceRequirements"),
            9: ("volumeMounts", "repeated:VolumeMount"),
            13: ("terminationMessagePath", "string"),
            14: ("imagePullPolicy", "string"),
            16: ("stdin", "flag"),
            17: ("stdinOnce", "flag"),
            18: ("tty", "flag"),
            20: ("terminationMessagePolicy", "string"),
            24: ("restartPolicy", "string"),
        },
        "Toleration": {
            1: ("key", "string"),
            2: ("operator", "string"),
            3: ("value", "string"),
            4: ("effect", "string"),
            5: ("tolerationSeconds", "optint"),
        },
        "PodSpec": {
            2: ("containers", "repeated:Container"),
            3: ("restartPolicy", "string"),
            4: ("terminationGracePeriodSeconds", "optint"),
            5: ("activeDeadlineSeconds", "optint"),
            6: ("dnsPolicy", "string"),
            7: ("nodeSelector", "map:string"),
            8: ("serviceAccountName", "string"),
            9: ("serviceAccount", "string"),
            10: ("nodeName", "string"),
            11: ("hostNetwork", "flag"),
            12: ("hostPID", "flag"),
            13: ("hostIPC", "flag"),
            15: ("imagePullSecrets", "repeated:LocalObjectReference"),
            16: ("hostname", "string"),
            17: ("subdomain", "string"),
            19: ("schedulerName", "string"),
            20: ("initContainers", "repeated:Container"),
            21: ("automountServiceAccountToken", "bool"),
            22: ("tolerations", "repeated:Toleration"),
            24: ("priorityClassName", "string"),
            25: ("priority", "optint"),
            27: ("shareProcessNamespace", "bool"),
            29: ("runtimeClassName", "string"),
            30: ("enableServiceLinks", "bool"),
            31: ("preemptionPolicy", "string"),
            35: ("setHostnameAsFQDN", "bool"),
            37: ("hostUsers", "bool"),
            41: ("hostnameOverride", "string"),
        },
        "PodTemplateSpec": {1: ("metadata", "message:ObjectMeta"), 2: ("spec", "message:PodSpec")},
        "RollingUpdateDeployment": {1: ("maxUnavailable", "intorstring"), 2: ("maxSurge", "intorstring")},
        "DeploymentStrategy": {1: ("type", "string"), 2: ("rollingUpdate", "message:RollingUpdateDeployment")},
        "DeploymentSpec": {
            1: ("replicas", "optint"),
            2: ("selector", "message:LabelSelector"),
            3: ("template", "message:PodTemplateSpec"),
            4: ("strategy", "message:DeploymentStrategy"),
            5: ("minReadySeconds", "int"),
            6: ("revisionHistoryLimit", "optint"),
            7: ("paused", "flag"),
            9: ("progressDeadlineSeconds", "optint"),
        },
        # a create's status is ignored by the API server (status subresource)
        "Deployment": {
            1: ("metadata", "message:ObjectMeta"),
            2: ("spec", "message:DeploymentSpec"),
            3: ("status", "skip"),
        },
        "RollingUpdateStatefulSetStrategy": {1: ("partition", "optint"), 2: ("maxUnavailable", "intorstring")},
        "StatefulSetUpdateStrategy": {
            1: ("type", "string"),
            2: ("rollingUpdate", "message:RollingUpdateStatefulSetStrategy"),
        },
        "StatefulSetOrdinals": {1: ("start", "int")},
        "StatefulSetPersistentVolumeClaimRetentionPolicy": {1: ("whenDeleted", "string"), 2: ("whenScaled", "string")},
        "StatefulSetSpec": {
            1: ("replicas", "optint"),
            2: ("selector", "message:LabelSelector"),
            3: ("template", "message:PodTemplateSpec"),
            5: ("serviceName", "string"),
            6: ("podManagementPolicy", "string"),
            7: ("updateStrategy", "message:StatefulSetUpdateStrategy"),
            8: ("revisionHistoryLimit", "optint"),
            9: ("minReadySeconds", "int"),
            10: (
                "persistentVolumeClaimRetentionPolicy",
                "message:StatefulSetPersistentVolumeClaimRetentionPolicy",
            ),
            11: ("ordinals", "message:StatefulSetOrdinals"),
        },
        "StatefulSet": {
            1: ("metadata", "message:ObjectMeta"),
            2: ("spec", "message:StatefulSetSpec"),
            3: ("status", "skip"),
        },
    }
)
# Messages whose presence means something even when empty (`strategy: {}`, `resources: {}`), as in JSON.
KEEP_EMPTY = {"DeploymentStrategy", "ResourceRequirements", "PodTemplateSpec", "LabelSelector"}
# kind -> the apiVersion its protobuf body must carry
KINDS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "ServiceAccount": "v1",
    "TokenRequest": "authentication.k8s.io/v1",
    "DeleteOptions": "v1",
}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
        if shift > 63:
            raise ProtobufError("varint too long")


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated length-delimited field")
            out.append((number, data[pos : pos + length]))
            pos += length
        else:
            raise ProtobufError(f"unsupported wire type {wire} for field {number}")
    return out


def _time(value: bytes) -> str | None:
    fields = _message(value, "Time")
    seconds = int(fields.get("seconds", 0))
    if not seconds:
        return None
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _string(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a length-delimited string")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ProtobufError("string field is not UTF-8") from None


def _map(value: int | bytes, *, item_type: str) -> tuple[str, str]:
    """One map entry; `item_type` string, bytes (base64 in JSON) or quantity (a `Quantity` message)."""
    if not isinstance(value, bytes):
        raise ProtobufError("expected a map entry")
    key = ""
    item = ""
    for number, part in _fields(value):
        if number == 1:
            key = _string(part)
        elif number == 2:
            if item_type == "string":
                item = _string(part)
            elif not isinstance(part, bytes):
                raise ProtobufError(f"expected {item_type} in a map entry")
            elif item_type == "bytes":
                item = base64.b64encode(part).decode()
            else:
                item = next((_string(v) for n, v in _fields(part) if n == 1), "")
    return key, item


def _int_or_string(value: int | bytes) -> int | str:
    """An IntOrString message (type 0 int / 1 string, intVal 2, strVal 3) as JSON writes it."""
    if not isinstance(value, bytes):
        raise ProtobufError("expected an IntOrString message")
    parts = dict(_fields(value))
    if parts.get(1, 0) == 1:
        return _string(parts.get(3, b""))
    number = parts.get(2, 0)
    if not isinstance(number, int):
        raise ProtobufError("expected an integer in IntOrString")
    return number - (1 << 32) if number >= 1 << 31 else number


def _message(data: bytes, schema_name: str) -> dict[str, Any]:
    schema = SCHEMAS[schema_name]
    out: dict[str, Any] = {}
    handlers: Mapping[str, Callable[[int | bytes], Any]] = {
        "string": _string,
        "int": lambda v: v if isinstance(v, int) else _bad("an integer"),
        "optint": lambda v: v if isinstance(v, int) else _bad("an integer"),  # 0 is a value, kept
        "bool": lambda v: bool(v) if isinstance(v, int) else _bad("a bool"),
        "flag": lambda v: bool(v) if isinstance(v, int) else _bad("a bool"),
        "intorstring": _int_or_string,
    }
    for number, value in _fields(data):
        if number not in schema:
            raise ProtobufError(f"{schema_name} field number {number} is not known to kubesim")
        name, kind = schema[number]
        if kind == "skip":
            continue
        if kind in handlers:
            decoded = handlers[kind](value)
            if decoded not in ("", 0, False) or kind in ("bool", "optint", "intorstring"):
                out[name] = decoded
        elif kind == "time":
            if not isinstance(value, bytes):
                _bad("a Time")
            stamp = _time(value)
            if stamp:
                out[name] = stamp
        elif kind.startswith("map:"):
            key, item = _map(value, item_type=kind.split(":", 1)[1])
            out.setdefault(name, {})[key] = item
        elif kind == "repeated:string":
            out.setdefault(name, []).append(_string(value))
        elif kind.startswith(("repeated:", "message:")):
            if not isinstance(value, bytes):
                _bad("a message")
            nested = _message(value, kind.split(":", 1)[1])
            if kind.startswith("repeated:"):
                out.setdefault(name, []).append(nested)
            elif nested or kind.split(":", 1)[1] in KEEP_EMPTY:
                out[name] = nested
    return out


def _bad(what: str) -> NoReturn:
    raise ProtobufError(f"expected {what}")


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object of one of `KINDS`; ProtobufError otherwise."""
    if not body.startswith(MAGIC):
        raise ProtobufError("body does not start with the Kubernetes protobuf magic number")
    type_meta: dict[str, str] = {}
    raw = b""
    for number, value in _fields(body[len(MAGIC) :]):
        if number == 1 and isinstance(value, bytes):
            for inner, part in _fields(value):
                if inner in (1, 2):
                    type_meta["apiVersion" if inner == 1 else "kind"] = _string(part)
        elif number == 2 and isinstance(value, bytes):
            raw = value
        elif number in (3, 4) and value not in (b"", 0):
            raise ProtobufError("content encodings inside the protobuf envelope are not supported")
    kind = type_meta.get("kind", "")
    if kind not in KINDS or type_meta.get("apiVersion") != KINDS[kind]:
        raise ProtobufError(f"protobuf bodies for {type_meta.get('apiVersion')}/{kind} are not supported by kubesim")
    return {"apiVersion": KINDS[kind], "kind": kind, **_message(raw, kind)}
