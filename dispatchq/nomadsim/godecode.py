"""Request bodies decoded the way Go's encoding/json decodes them into Nomad's structs.

Nomad reads bodies with `json.NewDecoder(body).Decode(&args)`: the first JSON value is
read (trailing bytes are ignored), keys match struct fields case-insensitively, unknown
keys are dropped, `null` leaves the zero value, `[]byte` fields take padded standard
base64, and errors carry Go's exact wording. Well-formed bodies of the expected shape
take orjson; other valid bodies take `json.loads`; the Go-style scanner only runs to
word an error or to find where the first value of a body with trailing bytes ends
(goscan.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from dispatchq.nomadsim.goscan import DecodeError, Scanner


class GoNumber(str):
    """A JSON number kept as its literal text, as Go reports it in type errors."""

    __slots__ = ()


@dataclass(frozen=True)
class GoType:
    """A Go type: `kind` is string|int|bool|bytes|map|slice|struct|any."""

    kind: str
    name: str
    elem: GoType | None = None
    fields: dict[str, GoType] = field(default_factory=dict)
    keep_unknown: bool = False
    folded: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folded.update({name.casefold(): name for name in self.fields})


STRING = GoType("string", "string")
INT = GoType("int", "int")
UINT64 = GoType("int", "uint64")
BOOL = GoType("bool", "bool")
BYTES = GoType("bytes", "[]uint8")
ANY = GoType("any", "interface {}")
STRING_MAP = GoType("map", "map[string]string", elem=STRING)
STRING_LIST = GoType("slice", "[]string", elem=STRING)


def struct(name: str, keep_unknown: bool = False, **fields: GoType) -> GoType:
    return GoType("struct", name, fields=fields, keep_unknown=keep_unknown)


def slice_of(elem: GoType) -> GoType:
    return GoType("slice", "[]" + elem.name, elem=elem)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


_DECODER = json.JSONDecoder(
    parse_int=GoNumber, parse_float=GoNumber, parse_constant=_reject_constant
)


def parse_json(body: bytes) -> Any:
    """The first JSON value of body, as Go's Decoder would accept it."""
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    try:
        # raw_decode stops after the first value, like Go's Decoder; a top-level scalar
        # is rechecked, since Python stops a number where Go reports a syntax error
        value = _DECODER.raw_decode(text)[0]
    except ValueError:
        end = Scanner(text).scan()
        return _DECODER.raw_decode(text[:end])[0]
    if not isinstance(value, dict | list):
        Scanner(text).scan()
    return value


# ---------------------------------------------------------------------------------------
# Base64: Go's base64.StdEncoding.Decode, for its error offsets.

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64 = {c: i for i, c in enumerate(_ALPHABET)}
_CANONICAL_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def go_b64decode(src: str) -> bytes:
    """Decode padded standard base64; DecodeError `illegal base64 data at input byte N`."""
    if len(src) % 4 == 0 and _CANONICAL_B64.fullmatch(src):
        return base64.b64decode(src)
    out = bytearray()
    si = 0
    n = len(src)

    def corrupt(offset: int) -> DecodeError:
        return DecodeError(f"illegal base64 data at input byte {offset}")

    while si < n:
        quantum: list[int] = []
        while len(quantum) < 4:
            if si == n:
                if not quantum:
                    return bytes(out)
                raise corrupt(si - len(quantum))
            ch = src[si]
            si += 1
            value = _B64.get(ch)
            if value is not None:
                quantum.append(value)
                continue
            if ch in "\r\n":
                continue
            if ch != "=" or len(quantum) < 2:
                raise corrupt(si - 1)
            if len(quantum) == 2:
                while si < n and src[si] in "\r\n":
                    si += 1
                if si == n:
                    raise corrupt(n)
                if src[si] != "=":
                    raise corrupt(si - 1)
                si += 1
            while si < n and src[si] in "\r\n":
                si += 1
            if si < n:
                raise corrupt(si)
            break
        packed = 0
        for value in quantum + [0] * (4 - len(quantum)):
            packed = (packed << 6) | value
        out += packed.to_bytes(3, "big")[: len(quantum) - 1]
    return bytes(out)


# ---------------------------------------------------------------------------------------
# Types: Go's UnmarshalTypeError wording.


def _json_kind(value: Any) -> str:
    if isinstance(value, GoNumber):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass
class _Context:
    struct: str
    stack: list[str]

    def error(self, what: str, gotype: GoType) -> DecodeError:
        if not self.stack:
            return DecodeError(f"json: cannot unmarshal {what} into Go value of type {gotype.name}")
        where = ".".join([self.struct, *self.stack])
        return DecodeError(
            f"json: cannot unmarshal {what} into Go struct field {where} of type {gotype.name}"
        )


def _plain(value: Any) -> Any:
    """A decoded `any` value with GoNumbers turned into Python numbers."""
    if isinstance(value, GoNumber):
        try:
            return int(value)
        except ValueError:
            return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _decode(value: Any, gotype: GoType, ctx: _Context) -> Any:
    if value is None:
        return None
    kind = gotype.kind
    if kind == "string":
        if type(value) is str:
            return value
        raise ctx.error(_json_kind(value), gotype)
    if kind == "any":
        return _plain(value)
    if kind == "int":
        if not isinstance(value, GoNumber):
            raise ctx.error(_json_kind(value), gotype)
        try:
            number = int(value)
        except ValueError:
            raise ctx.error(f"number {value}", gotype) from None
        low, high = (0, 2**64 - 1) if gotype.name == "uint64" else (-(2**63), 2**63 - 1)
        if not low <= number <= high:
            raise ctx.error(f"number {value}", gotype)
        return number
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ctx.error(_json_kind(value), gotype)
    if kind == "bytes":
        if type(value) is str:
            return go_b64decode(value)
        raise ctx.error(_json_kind(value), gotype)
    if kind == "slice":
        if not isinstance(value, list):
            raise ctx.error(_json_kind(value), gotype)
        assert gotype.elem is not None
        return [_decode(v, gotype.elem, ctx) for v in value]
    if kind == "map":
        if not isinstance(value, dict):
            raise ctx.error(_json_kind(value), gotype)
        assert gotype.elem is not None
        if gotype.elem.kind == "string" and all(type(v) is str for v in value.values()):
            return value
        zero: Any = "" if gotype.elem.kind == "string" else None
        out = {}
        for key, item in value.items():
            decoded = _decode(item, gotype.elem, ctx)
            out[key] = zero if decoded is None else decoded
        return out
    return _decode_struct(value, gotype, ctx)


def _decode_struct(value: Any, gotype: GoType, ctx: _Context) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ctx.error(_json_kind(value), gotype)
    out: dict[str, Any] = {}
    outer = ctx.struct
    fields = gotype.fields
    for key, item in value.items():
        name = key if key in fields else gotype.folded.get(key.casefold())
        if name is None:
            if gotype.keep_unknown:
                out[key] = _plain(item)
            continue
        kind = fields[name].kind
        # fast paths for the common well-typed fields
        if item is None or (kind == "string" and type(item) is str):
            out[name] = item
            continue
        ctx.struct = gotype.name.rsplit(".", 1)[-1]
        ctx.stack.append(name)
        out[name] = _decode(item, gotype.fields[name], ctx)
        ctx.stack.pop()
        ctx.struct = outer
    return out


def _fast_struct(body: bytes, gotype: GoType) -> dict[str, Any] | None:
    """The common case at orjson's speed: one JSON object, exact field names, values of
    the fields' types (strings, canonical base64, in-range integers, string maps).

    None for anything else (trailing bytes, invalid UTF-8, folded or unknown keys,
    floats, nulls in maps, ...), which then takes the Go-faithful path.
    """
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(raw) is not dict:
        return None
    fields = gotype.fields
    for key, item in raw.items():
        field_type = fields.get(key)
        if field_type is None:
            return None
        kind = field_type.kind
        if item is None or (kind == "string" and type(item) is str):
            continue
        if kind == "bytes" and type(item) is str and len(item) % 4 == 0:
            if not _CANONICAL_B64.fullmatch(item):
                return None
            raw[key] = binascii.a2b_base64(item)
        elif kind == "int" and type(item) is int:
            low = 0 if field_type.name == "uint64" else -(2**63)
            if not low <= item < 2**63:
                return None
        elif not (
            kind == "map"
            and type(item) is dict
            and field_type.elem is STRING
            and all(type(v) is str for v in item.values())
        ):
            return None
    return raw


def decode_body(body: bytes, gotype: GoType) -> dict[str, Any]:
    """Decode a request body into the struct described by gotype (keys canonicalised)."""
    fast = _fast_struct(body, gotype)
    return fast if fast is not None else decode_body_go(body, gotype)


def decode_body_go(body: bytes, gotype: GoType) -> dict[str, Any]:
    """decode_body without the orjson shortcut: what it must agree with."""
    raw = parse_json(body)
    if raw is None:
        return {}
    ctx = _Context(gotype.name.rsplit(".", 1)[-1], [])
    return _decode_struct(raw, gotype, ctx)

