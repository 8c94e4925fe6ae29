"""ACL tokens and policies: the namespace rules of Nomad's policy language.

Rules are HCL (or its JSON form): `namespace "<name or glob>" { policy = "read" }` and
`capabilities = [...]`; other blocks (node, agent, operator, ...) are parsed and
ignored. An exact namespace rule wins over globs, and among globs the one with the most
literal characters wins (Nomad's closest match). `deny` anywhere in the matched rule
denies everything.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any

from dispatchq.nomadsim.jsonshape import new_uuid, now_ns, rfc3339

_READ = {
    "list-jobs", "parse-job", "read-job", "csi-list-volume", "csi-read-volume",
    "read-job-scaling", "list-scaling-policies", "read-scaling-policy", "host-volume-read",
}
_WRITE = _READ | {
    "scale-job", "submit-job", "dispatch-job", "read-logs", "read-fs", "alloc-exec",
    "alloc-lifecycle", "csi-mount-volume", "csi-write-volume", "submit-recommendation",
    "host-volume-register",
}
_SCALE = {"list-scaling-policies", "read-scaling-policy", "read-job-scaling", "scale-job"}
POLICY_CAPS = {"read": _READ, "write": _WRITE, "scale": _SCALE, "deny": {"deny"}}


class PolicyError(ValueError):
    pass


_HCL_TOKEN = re.compile(
    r'\s*(?:(?P<comment>#[^\n]*|//[^\n]*|/\*.*?\*/)|(?P<str>"(?:[^"\\]|\\.)*")'
    r"|(?P<punct>[{}\[\]=,])|(?P<word>[A-Za-z0-9_.\-]+))",
    re.DOTALL,
)


def _hcl_tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        match = _HCL_TOKEN.match(text, pos)
        if match is None:
            raise PolicyError(f"At {pos}: illegal char {text[pos]!r}")
        pos = match.end()
        kind = match.lastgroup or ""
        if kind == "comment":
            continue
        value = match.group(kind)
        tokens.append((kind, json.loads(value) if kind == "str" else value))
    return tokens


class _Hcl:
    def __init__(self, text: str) -> None:
        self.tokens = _hcl_tokens(text)
        self.pos = 0

    def take(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise PolicyError("unexpected end of policy")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def body(self, closing: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while self.pos < len(self.tokens):
            kind, name = self.take()
            if closing and (kind, name) == ("punct", "}"):
                return out
            if kind not in ("word", "str"):
                raise PolicyError(f"unexpected {name!r}")
            labels = []
            kind, value = self.take()
            while kind == "str":
                labels.append(value)
                kind, value = self.take()
            if (kind, value) == ("punct", "="):
                out[name] = self.value()
            elif (kind, value) == ("punct", "{"):
                target = out.setdefault(name, {})
                for label in labels:
                    target = target.setdefault(label, {})
                target.update(self.body(closing=True))
            else:
                raise PolicyError(f"expected '=' or '{{' after {name!r}")
        if closing:
            raise PolicyError("missing '}'")
        return out

    def value(self) -> Any:
        kind, value = self.take()
        if kind in ("str", "word"):
            return value
        if value == "[":
            items: list[str] = []
            while True:
                kind, item = self.take()
                if (kind, item) == ("punct", "]"):
                    return items
                if (kind, item) == ("punct", ","):
                    continue
                items.append(item)
        raise PolicyError(f"unexpected {value!r}")


def parse_rules(rules: str) -> dict[str, set[str]]:
    """Namespace pattern -> capabilities granted by one policy's rules."""
    try:
        tree = json.loads(rules) if rules.lstrip().startswith("{") else _Hcl(rules).body(False)
    except (ValueError, PolicyError) as exc:
        raise PolicyError(f"Failed to parse ACL Policy: {exc}") from None
    namespaces = tree.get("namespace") or {}
    if not isinstance(namespaces, dict):
        raise PolicyError("Failed to parse ACL Policy: namespace must be a block")
    out: dict[str, set[str]] = {}
    for pattern, rule in namespaces.items():
        caps: set[str] = set()
        policy = rule.get("policy", "")
        if policy:
            if policy not in POLICY_CAPS:
                raise PolicyError(f"Invalid namespace policy: {policy!r}")
            caps |= POLICY_CAPS[policy]
        listed = rule.get("capabilities") or []
        if not isinstance(listed, list):
            raise PolicyError(f"Invalid namespace capabilities: {listed!r}")
        caps |= set(listed)
        out[pattern] = caps
    return out


@dataclass
class Token:
    accessor: str
    secret: str
    name: str
    type: str
    policies: list[str]
    create_index: int
    create_time: int = field(default_factory=now_ns)

    def render(self) -> dict[str, Any]:
        return {
            "AccessorID": self.accessor,
            "SecretID": self.secret,
            "Name": self.name,
            "Type": self.type,
            "Policies": self.policies or None,
            "Roles": None,
            "Global": True,
            "CreateTime": rfc3339(self.create_time),
            "ExpirationTime": None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.create_index,
        }


@dataclass
class Authz:
    """What a request may do: everything (management) or per-namespace capabilities."""

    management: bool
    rules: dict[str, set[str]]

    def allows(self, namespace: str, capability: str) -> bool:
        if self.management:
            return True
        caps = self.rules.get(namespace)
        if caps is None:
            best = -1
            for pattern, pattern_caps in self.rules.items():
                literal = len(pattern.replace("*", ""))
                if "*" in pattern and fnmatch.fnmatchcase(namespace, pattern) and literal > best:
                    best, caps = literal, pattern_caps
        return caps is not None and "deny" not in caps and capability in caps


ALLOW_ALL = Authz(True, {})


class AclStore:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tokens: dict[str, Token] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.bootstrap_index = 0

    def bootstrap(self, index: int) -> Token:
        secret = new_uuid(secure=True)
        token = Token(new_uuid(secure=True), secret, "Bootstrap Token", "management", [], index)
        self.tokens[token.secret] = token
        self.bootstrap_index = index
        return token

    def resolve(self, secret: str) -> Authz | None:
        """The request's permissions; None when the token does not authenticate."""
        if not self.enabled:
            return ALLOW_ALL
        if not secret:
            return self._merge(["anonymous"])
        token = self.tokens.get(secret)
        if token is None:
            return None
        if token.type == "management":
            return ALLOW_ALL
        return self._merge(token.policies)

    def _merge(self, names: list[str]) -> Authz:
        rules: dict[str, set[str]] = {}
        for name in names:
            policy = self.policies.get(name)
            if policy is None:
                continue
            for pattern, caps in policy["_caps"].items():
                rules.setdefault(pattern, set()).update(caps)
        return Authz(False, rules)
