"""Go's encoding/json syntax errors: a scanner following the states of Go's, used only
to word the error of a body Python's parser rejected (or to find where the first value
of a body with trailing bytes ends, which Go's Decoder ignores)."""

from __future__ import annotations

from dispatchq.nomadsim.jsonshape import go_quote_char


class DecodeError(Exception):
    """A body Go would reject; the message is Go's."""


_SPACE = " \t\r\n"
_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"


class Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.stack: list[str] = []  # "key", "value" (object) or "array"

    def fail(self, ch: str, context: str) -> DecodeError:
        return DecodeError(f"invalid character {go_quote_char(ch)} {context}")

    def scan(self) -> int:
        """Index just past the first complete value; DecodeError like Go's Decoder."""
        text = self.text
        pos = 0
        while pos < len(text) and text[pos] in _SPACE:
            pos += 1
        if pos == len(text):
            raise DecodeError("EOF")
        return self._value(pos)

    def _need(self, pos: int) -> str:
        if pos >= len(self.text):
            raise DecodeError("unexpected EOF")
        return self.text[pos]

    def _skip(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in _SPACE:
            pos += 1
        return pos

    def _value(self, pos: int) -> int:
        pos = self._skip(pos)
        ch = self._need(pos)
        if ch == "{":
            return self._object(pos + 1)
        if ch == "[":
            return self._array(pos + 1)
        if ch == '"':
            return self._string(pos + 1)
        if ch == "-" or ch in _DIGITS:
            return self._number(pos)
        for word in ("true", "false", "null"):
            if ch == word[0]:
                return self._literal(pos, word)
        raise self.fail(ch, "looking for beginning of value")

    def _object(self, pos: int) -> int:
        pos = self._skip(pos)
        if self._need(pos) == "}":
            return pos + 1
        while True:
            pos = self._skip(pos)
            ch = self._need(pos)
            if ch != '"':
                raise self.fail(ch, "looking for beginning of object key string")
            pos = self._skip(self._string(pos + 1))
            ch = self._need(pos)
            if ch != ":":
                raise self.fail(ch, "after object key")
            pos = self._skip(self._value(pos + 1))
            ch = self._need(pos)
            if ch == "}":
                return pos + 1
            if ch != ",":
                raise self.fail(ch, "after object key:value pair")
            pos += 1

    def _array(self, pos: int) -> int:
        pos = self._skip(pos)
        if self._need(pos) == "]":
            return pos + 1
        while True:
            pos = self._skip(self._value(pos))
            ch = self._need(pos)
            if ch == "]":
                return pos + 1
            if ch != ",":
                raise self.fail(ch, "after array element")
            pos += 1

    def _string(self, pos: int) -> int:
        while True:
            ch = self._need(pos)
            if ch == '"':
                return pos + 1
            if ch == "\\":
                esc = self._need(pos + 1)
                if esc == "u":
                    for i in range(4):
                        digit = self._need(pos + 2 + i)
                        if digit not in _HEX:
                            raise self.fail(digit, "in \\u hexadecimal character escape")
                    pos += 6
                    continue
                if esc not in 'bfnrt\\/"':
                    raise self.fail(esc, "in string escape code")
                pos += 2
                continue
            if ord(ch) < 0x20:
                raise self.fail(ch, "in string literal")
            pos += 1

    def _digits(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in _DIGITS:
            pos += 1
        return pos

    def _number(self, pos: int) -> int:
        if self.text[pos] == "-":
            pos += 1
            ch = self._need(pos)
            if ch not in _DIGITS:
                raise self.fail(ch, "in numeric literal")
        pos = pos + 1 if self.text[pos] == "0" else self._digits(pos)
        if pos < len(self.text) and self.text[pos] == ".":
            ch = self._need(pos + 1)
            if ch not in _DIGITS:
                raise self.fail(ch, "after decimal point in numeric literal")
            pos = self._digits(pos + 1)
        if pos < len(self.text) and self.text[pos] in "eE":
            pos += 1
            if self._need(pos) in "+-":
                pos += 1
            ch = self._need(pos)
            if ch not in _DIGITS:
                raise self.fail(ch, "in exponent of numeric literal")
            pos = self._digits(pos)
        return pos

    def _literal(self, pos: int, word: str) -> int:
        for i, expected in enumerate(word[1:], start=1):
            ch = self._need(pos + i)
            if ch != expected:
                raise self.fail(ch, f"in literal {word} (expecting {go_quote_char(expected)})")
        return pos + len(word)
