"""A go-bexpr subset for the `filter` query parameter of list endpoints.

Supported: `==`, `!=`, `is [not] nil`, `is [not] empty`, `[not] contains`,
`[not] matches`, `[not] in`, `and`, `or`, `not` and parentheses, over selectors such as
`ParentID`, `ParameterizedJob.Payload` or `Meta["key"]`. Values are quoted strings
("..." or `...`), numbers, `true`/`false` or bare words. A selector whose first part is
not a field of the listed object is rejected when the filter is created, as go-bexpr
rejects it against the Go type; the caller reports that as Nomad does:
500 `failed to create result paginator: ...`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]


class FilterError(ValueError):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<op>==|!=|\(|\)|\[|\]|\.)
      | (?P<word>[A-Za-z0-9_\-+/:@*]+)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "is", "nil", "empty", "in", "contains", "matches"}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise FilterError(f"1:{pos + 1} ({pos}): no match found, unexpected {text[pos]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        elif kind == "raw":
            kind, value = "str", value[1:-1]
        tokens.append((kind, value))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, fields: Collection[str]) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.fields = fields

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else ("eof", "")

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.pos += 1
        return token

    def expect_word(self, *words: str) -> str:
        kind, value = self.take()
        if kind != "word" or value not in words:
            raise FilterError(f"no match found, expected one of {list(words)}, got {value!r}")
        return value

    def parse(self) -> Predicate:
        if not self.tokens:
            raise FilterError("no match found, expected an expression")
        pred = self.or_expr()
        if self.peek()[0] != "eof":
            raise FilterError(f"no match found, unexpected {self.peek()[1]!r}")
        return pred

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.peek() == ("word", "or"):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else lambda obj: any(p(obj) for p in parts)

    def and_expr(self) -> Predicate:
        parts = [self.not_expr()]
        while self.peek() == ("word", "and"):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else lambda obj: all(p(obj) for p in parts)

    def not_expr(self) -> Predicate:
        if self.peek() == ("word", "not"):
            self.take()
            inner = self.not_expr()
            return lambda obj: not inner(obj)
        if self.peek() == ("op", "("):
            self.take()
            inner = self.or_expr()
            if self.take() != ("op", ")"):
                raise FilterError("no match found, expected ')'")
            return inner
        return self.match_expr()

    def selector(self) -> list[str]:
        kind, value = self.take()
        if kind != "word" or value in _KEYWORDS:
            raise FilterError(f"no match found, expected a selector, got {value!r}")
        if value not in self.fields:
            raise FilterError(f'Selector "{value}" is not valid')
        path = [value]
        while self.peek() in (("op", "."), ("op", "[")):
            _, op = self.take()
            kind, part = self.take()
            if op == "[" and self.take() != ("op", "]"):
                raise FilterError("no match found, expected ']'")
            if kind not in ("word", "str"):
                raise FilterError(f"no match found, expected a selector part, got {part!r}")
            path.append(part)
        return path

    def value(self) -> str:
        kind, value = self.take()
        if kind not in ("str", "word"):
            raise FilterError(f"no match found, expected a value, got {value!r}")
        return value

    def match_expr(self) -> Predicate:
        kind, _ = self.peek()
        if kind == "str" or (kind == "word" and self.peek(1)[1] in ("in", "not")):
            literal = self.value()
            negate = self.peek() == ("word", "not")
            if negate:
                self.take()
            self.expect_word("in")
            path = self.selector()
            return _negated(lambda obj: _contains(_resolve(obj, path), literal), negate)
        path = self.selector()
        kind, op = self.take()
        if (kind, op) in (("op", "=="), ("op", "!=")):
            literal = self.value()
            equal: Predicate = lambda obj: _equals(_resolve(obj, path), literal)  # noqa: E731
            return _negated(equal, op == "!=")
        if (kind, op) == ("word", "is"):
            negate = self.peek() == ("word", "not")
            if negate:
                self.take()
            what = self.expect_word("nil", "empty")
            if what == "nil":
                return _negated(lambda obj: _resolve(obj, path) is None, negate)
            return _negated(lambda obj: not _resolve(obj, path), negate)
        negate = (kind, op) == ("word", "not")
        if negate:
            op = self.expect_word("contains", "matches")
        if op == "contains":
            literal = self.value()
            return _negated(lambda obj: _contains(_resolve(obj, path), literal), negate)
        if op == "matches":
            try:
                pattern = re.compile(self.value())
            except re.error as exc:
                raise FilterError(f"invalid regular expression: {exc}") from None
            return _negated(
                lambda obj: isinstance(v := _resolve(obj, path), str) and bool(pattern.search(v)),
                negate,
            )
        raise FilterError(f"no match found, unexpected {op!r}")


def _negated(pred: Predicate, negate: bool) -> Predicate:
    return (lambda obj: not pred(obj)) if negate else pred


def _resolve(obj: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(obj, dict):
            obj = obj.get(part)
        else:
            return None
    return obj


def _equals(actual: Any, literal: str) -> bool:
    if isinstance(actual, bool):
        return literal.lower() == str(actual).lower()
    if isinstance(actual, int | float):
        try:
            return float(literal) == actual
        except ValueError:
            return False
    if actual is None:
        return literal == ""
    return isinstance(actual, str) and actual == literal


def _contains(container: Any, literal: str) -> bool:
    if isinstance(container, str):
        return literal in container
    if isinstance(container, list | dict):
        return literal in container
    return False


def compile_filter(text: str, fields: Collection[str]) -> Predicate:
    """A predicate over JSON objects; FilterError when go-bexpr would refuse the filter."""
    return _Parser(text, fields).parse()
