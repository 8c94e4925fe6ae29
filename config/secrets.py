"""The secret values of this process (the Nomad token, the Redis password), registered by
whoever reads them (the Nomad client, the worker's runtime, the CLI), so that no log line
and no error text shows them: `dispatchq.config.logging` masks every line with `scrub`."""

from __future__ import annotations

from collections.abc import Iterable

MASK = "***"
_secrets: set[str] = set()


def register_secrets(values: Iterable[str | None]) -> None:
    """Remember secret values so that no log line ever shows them."""
    _secrets.update(v for v in values if v and len(v) >= 4)


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by the mask."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
