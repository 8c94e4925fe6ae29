"""Batch items from JSON Lines or CSV, each with its line number for error messages.

JSONL: one object per line, `{"payload": "<text>"}` or `{"payload_base64": "..."}` or
`{"payload_ref": "file:///..."}`, with optional `"meta": {...}` and `"request_id"`.
Blank lines are skipped.

CSV: a header row; the columns `payload`, `payload_base64`, `payload_ref` and `request_id`
mean what they do in JSONL, and every other column is a meta key (an empty cell leaves the
key out).
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from dispatchq.producer.enqueue import InvalidRequest

_FIELDS = ("payload", "payload_base64", "payload_ref", "request_id")


@dataclass(slots=True)
class BatchItem:
    """One request of a batch. `line` is where it came from (1-based), for messages."""

    payload: bytes | None = None
    payload_ref: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    request_id: str | None = None
    line: int = 0


class BatchInputError(InvalidRequest):
    """Lines that are not valid batch items; nothing was enqueued."""


def item_from_mapping(data: Any, line: int) -> BatchItem:
    """A BatchItem from a JSON object or CSV row; raises ValueError naming the problem."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - {*_FIELDS, "meta"}
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    given = [name for name in ("payload", "payload_base64", "payload_ref") if data.get(name)]
    if len(given) > 1:
        raise ValueError(f"give one of payload, payload_base64, payload_ref (got {given})")
    payload: bytes | None = None
    if "payload" in data and data["payload"] is not None:
        if not isinstance(data["payload"], str):
            raise ValueError("payload must be a string (use payload_base64 for binary)")
        payload = data["payload"].encode()
    if data.get("payload_base64") is not None:
        try:
            payload = base64.b64decode(str(data["payload_base64"]), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("payload_base64 is not valid base64") from None
    ref = data.get("payload_ref")
    if ref is not None and not isinstance(ref, str):
        raise ValueError("payload_ref must be a string")
    meta = data.get("meta") or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise ValueError("meta must be an object of string values")
    request_id = data.get("request_id")
    if request_id is not None and not (isinstance(request_id, str) and request_id):
        raise ValueError("request_id must be a non-empty string")
    return BatchItem(payload, ref or None, dict(meta), request_id, line)


def read_jsonl(stream: TextIO) -> Iterator[BatchItem]:
    problems: list[str] = []
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            yield item_from_mapping(json.loads(text), number)
        except json.JSONDecodeError as err:
            problems.append(f"line {number}: invalid JSON ({err.msg})")
        except ValueError as err:
            problems.append(f"line {number}: {err}")
    if problems:
        raise BatchInputError(summarise(problems))


def read_csv(stream: TextIO) -> Iterator[BatchItem]:
    reader = csv.DictReader(stream)
    problems: list[str] = []
    for row in reader:
        number = reader.line_num
        if None in row:
            problems.append(f"line {number}: more cells than header columns")
            continue
        data: dict[str, Any] = {k: v for k, v in row.items() if k in _FIELDS and v}
        data["meta"] = {k: v for k, v in row.items() if k not in _FIELDS and v}
        try:
            yield item_from_mapping(data, number)
        except ValueError as err:
            problems.append(f"line {number}: {err}")
    if problems:
        raise BatchInputError(summarise(problems))


def summarise(problems: Iterable[str], limit: int = 20) -> str:
    """The problems, one per line, the first `limit` of them and a count of the rest."""
    listed = list(problems)
    shown = listed[:limit]
    more = f"\n... and {len(listed) - limit} more" if len(listed) > limit else ""
    return f"{len(listed)} bad item(s), nothing was enqueued:\n" + "\n".join(shown) + more
