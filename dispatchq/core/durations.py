"""Durations as Go writes and reads them: `go_duration` prints nanoseconds as Go's
`time.Duration.String()` does (what `nomad job dispatch` prints), `parse_duration` reads the
CLI's `-wait-timeout` (`90s`, `1h30m`)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go-style duration (`90s`, `1h30m`, `500ms`) or plain seconds, in seconds; raises
    ValueError for anything else or a duration not above 0."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 5m or 1h30m") from None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be above 0")
    return seconds


def go_duration(nanoseconds: int) -> str:
    """Go's `time.Duration.String()`: 0s, 750ms, 1.5s, 30s, 1m0s, 1h2m3.5s."""
    sign = "-" if nanoseconds < 0 else ""
    value = abs(nanoseconds)
    if value == 0:
        return "0s"
    if value < 1_000:
        return f"{sign}{value}ns"
    if value < 1_000_000:
        fraction, whole = _fraction(value, 3)
        return f"{sign}{whole}{fraction}µs"
    if value < 1_000_000_000:
        fraction, whole = _fraction(value, 6)
        return f"{sign}{whole}{fraction}ms"
    fraction, seconds = _fraction(value, 9)
    text = f"{seconds % 60}{fraction}s"
    minutes = seconds // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes // 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


def _fraction(value: int, precision: int) -> tuple[str, int]:
    """Go's fmtFrac: the last `precision` digits as a fraction without trailing zeros."""
    digits = ""
    for _ in range(precision):
        digit = value % 10
        if digits or digit:
            digits = str(digit) + digits
        value //= 10
    return ("." + digits if digits else ""), value
