"""Go-flavoured rendering helpers: `%q`, `%v` of slices, durations, times, multierrors.

Nomad's messages are produced by Go's fmt and time packages; clients match them
literally, so these helpers reproduce the Go output rather than Python's.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

ZERO_TIME = "0001-01-01T00:00:00Z"

_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
}


def _go_escape_char(ch: str, quote: str) -> str:
    if ch == quote:
        return "\\" + ch
    if ch in _GO_ESCAPES:
        return _GO_ESCAPES[ch]
    code = ord(ch)
    if ch.isprintable() or ch == " ":
        return ch
    if code < 0x80:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def go_quote(text: str) -> str:
    """Go's `%q` / strconv.Quote of a string."""
    return '"' + "".join(_go_escape_char(ch, '"') for ch in text) + '"'


def go_quote_char(ch: str) -> str:
    """How encoding/json quotes an offending character in syntax errors."""
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + _go_escape_char(ch, "'") + "'"


def go_list(items: Iterable[str]) -> str:
    """Go's `%v` of a []string: `[a b]`."""
    return "[" + " ".join(items) + "]"


def multierror(errors: list[str]) -> str:
    """hashicorp/go-multierror's default formatting."""
    if len(errors) == 1:
        return f"1 error occurred:\n\t* {errors[0]}\n\n"
    points = "\n\t".join(f"* {e}" for e in errors)
    return f"{len(errors)} errors occurred:\n\t{points}\n\n"


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([a-z\u00b5\u03bc]+)")


def parse_go_duration(text: str) -> int:
    """time.ParseDuration, returning nanoseconds; ValueError when Go would fail."""
    rest = text
    sign = 1
    if rest[:1] in ("-", "+"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"time: invalid duration {go_quote(text)}")
    total = 0.0
    pos = 0
    while pos < len(rest):
        match = _DURATION_PART.match(rest, pos)
        if match is None or match.group(1) in ("", "."):
            raise ValueError(f"time: invalid duration {go_quote(text)}")
        unit = _DURATION_UNITS.get(match.group(2))
        if unit is None:
            raise ValueError(f"time: unknown unit {go_quote(match.group(2))} in duration")
        total += float(match.group(1)) * unit
        pos = match.end()
    if total > 2**63 - 1:
        raise ValueError(f"time: invalid duration {go_quote(text)}")
    return sign * int(total)


def now_ns() -> int:
    return time.time_ns()


def rfc3339(ns: int) -> str:
    """A Go time.Time as go-codec renders it (RFC3339 with nanoseconds, UTC)."""
    if ns <= 0:
        return ZERO_TIME
    seconds, rem = divmod(ns, 1_000_000_000)
    base = _rfc3339_second(seconds)
    if rem:
        return f"{base}.{rem:09d}".rstrip("0") + "Z"
    return base + "Z"


@functools.lru_cache(maxsize=64)
def _rfc3339_second(seconds: int) -> str:
    """The date and time of a second: most times rendered together share a few seconds,
    and formatting one costs several microseconds."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def new_uuid(secure: bool = False) -> str:
    """A random (version 4) UUID string, built without the uuid module's overhead.

    IDs come from `random` (no getrandom system call per ID, which shows under load);
    `secure` ones (ACL secrets) from os.urandom.
    """
    h = os.urandom(16).hex() if secure else f"{random.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = dict(zip("0123456789abcdef", "89ab89ab89ab89ab", strict=True))


_COMPACT = json.JSONEncoder(separators=(",", ":"))
_PRETTY = json.JSONEncoder(indent=4)


def dumps(value: Any, pretty: bool = False) -> bytes:
    """JSON as Nomad sends it (`?pretty` indents with the stdlib encoder, reused).

    Compact JSON comes from orjson, several times faster; it writes non-ASCII as UTF-8
    (as Go does) rather than `\\u` escapes. What it refuses (integers beyond 64 bits,
    non-string keys) goes to the stdlib encoder.
    """
    if not pretty:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    return (_PRETTY if pretty else _COMPACT).encode(value).encode()


_SECOND = 1_000_000_000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE


def go_duration(ns: int) -> str:
    """time.Duration(ns).String(): `24h0m0s`, `1.5s`, `15.2ms`, `0s`."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < _SECOND:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _duration_fraction(ns, size) + unit
    hours, rest = divmod(ns, _HOUR)
    minutes, rest = divmod(rest, _MINUTE)
    seconds = _duration_fraction(rest, _SECOND)
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{sign}{minutes}m{seconds}s"
    return f"{sign}{seconds}s"


def _duration_fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")
