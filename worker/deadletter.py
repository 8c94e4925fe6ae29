"""The dead-letter list: messages no retry can fix, kept with the reason for `dispatchq dlq`."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from dispatch import keys


def dead_letter(client: redis.Redis, *, reason: str, **message: Any) -> None:
    """Append one entry to `keys.DLQ` and renew its TTL."""
    entry = {"reason": reason, "at": time.time(), **message}
    pipe = client.pipeline(transaction=False)
    pipe.rpush(keys.DLQ, json.dumps(entry, default=repr))
    pipe.expire(keys.DLQ, keys.DLQ_TTL)
    pipe.execute()
