"""What the CLI prints: control characters of every stored field escaped.

What the CLI shows comes from producers and from Nomad (meta keys, error texts, task
messages, dead letters). Printed raw, an escape sequence in one of them could retitle the
terminal, clear it or rewrite the lines above. So for the whole run of a command, `dispatchq`
writes through `EscapingStream` (`escaping`): every C0 control character but newline and
tab, DEL and the C1 controls come out as `\\xNN`, whatever printed them (print, log lines).
Rich, which writes escape sequences of its own for colours and the live bar, is given the
stream beneath (`raw`), and each stored field it shows goes through `safe` first.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def safe(text: str) -> str:
    """`text` with its control characters (but newline and tab) written as `\\xNN`."""
    return _CONTROL.sub(_escaped, text)


class EscapingStream:
    """A text stream that writes what it is given through `safe`."""

    escapes_controls = True

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(safe(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding...
        return getattr(self.stream, name)


def raw(stream: TextIO) -> TextIO:
    """The stream beneath an `EscapingStream` (for Rich), or the stream itself."""
    return stream.stream if isinstance(stream, EscapingStream) else stream


@contextmanager
def escaping() -> Iterator[None]:
    """stdout and stderr write through `EscapingStream` until the block ends."""
    out, err = sys.stdout, sys.stderr
    sys.stdout = EscapingStream(raw(out))
    sys.stderr = EscapingStream(raw(err))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
