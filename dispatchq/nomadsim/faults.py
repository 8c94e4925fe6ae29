"""Fault injection: per-route rules (500, 429, slow, cut) and a global latency.

An `error` rule answers its `status` (500 unless given, any 5xx), `rate_limit` 429.
A rule matches a request when its `route` (an fnmatch pattern over nomadsim's route
names, e.g. `dispatch`, `evaluation*`, `*`) and `method` match. It fires with
`probability`, for at most `count` requests if set ("the next N requests"). Rules are
tried in order: every firing `slow` rule adds its delay, and the first firing `error`,
`rate_limit` or `cut` rule decides the response.
"""

from __future__ import annotations

import fnmatch
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("error", "rate_limit", "slow", "cut")
DEFAULT_MESSAGES = {"error": "No cluster leader", "rate_limit": "Too Many Requests"}


@dataclass
class FaultRule:
    kind: str
    route: str = "*"
    method: str = "*"
    probability: float = 1.0
    count: int | None = None
    delay_ms: float = 0.0
    message: str = ""
    #: The status an `error` rule answers (500 to 599; default 500).
    status: int = 500
    id: int = 0

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        if not isinstance(data, dict):
            raise ValueError("a fault rule must be a JSON object")
        unknown = set(data) - {"kind", "route", "method", "probability", "count", "delay_ms",
                               "message", "status", "id"}
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        rule = cls(
            kind=str(data.get("kind", "")),
            route=str(data.get("route", "*")),
            method=str(data.get("method", "*")).upper(),
            probability=float(data.get("probability", 1.0)),
            count=None if data.get("count") is None else int(data["count"]),
            delay_ms=float(data.get("delay_ms", 0.0)),
            message=str(data.get("message", "")),
            status=int(data.get("status", 500)),
        )
        if rule.kind not in KINDS:
            raise ValueError(f"fault kind must be one of {list(KINDS)}, not {rule.kind!r}")
        if not 0.0 <= rule.probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        if rule.kind == "error" and not 500 <= rule.status <= 599:
            raise ValueError("an error rule's status must be from 500 to 599")
        if rule.kind == "slow" and rule.delay_ms <= 0:
            raise ValueError("a slow rule needs delay_ms > 0")
        return rule

    @classmethod
    def from_flag(cls, text: str) -> FaultRule:
        """`kind[:route[:probability[:count[:delay_ms]]]]`, or a JSON object."""
        if text.lstrip().startswith("{"):
            return cls.from_json(json.loads(text))
        parts = text.split(":")
        keys = ("kind", "route", "probability", "count", "delay_ms")
        return cls.from_json({k: v for k, v in zip(keys, parts, strict=False) if v != ""})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def matches(self, route: str, method: str) -> bool:
        return fnmatch.fnmatchcase(route, self.route) and self.method in ("*", method)


@dataclass
class Decision:
    delay: float = 0.0
    action: FaultRule | None = None


NO_FAULT = Decision()


class Faults:
    def __init__(self, latency_ms: float, rules: list[FaultRule]) -> None:
        self.latency_ms = latency_ms
        self.rules: list[FaultRule] = []
        self.injected: Counter[str] = Counter()
        self._next_id = 1
        for rule in rules:
            self.add(rule)

    def add(self, rule: FaultRule) -> FaultRule:
        rule.id = self._next_id
        self._next_id += 1
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules = []
        self.latency_ms = 0.0

    def decide(self, route: str, method: str) -> Decision:
        if not self.rules and not self.latency_ms:
            return NO_FAULT
        decision = Decision(self.latency_ms / 1000.0)
        for rule in self.rules:
            if rule.count == 0 or not rule.matches(route, method):
                continue
            if rule.probability < 1.0 and random.random() >= rule.probability:  # noqa: S311
                continue
            if rule.count is not None:
                rule.count -= 1
            self.injected[rule.kind] += 1
            if rule.kind == "slow":
                decision.delay += rule.delay_ms / 1000.0
                continue
            decision.action = rule
            break
        return decision

    def to_json(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "rules": [r.to_json() for r in self.rules]}
