"""Leading: the lease that lets one tracker at a time follow the children (SET NX PX in
Redis, renewed every third of its life; a standby takes over once it lapses), and what a
new leader does first, making every followed child due (`reconcile_all`)."""

from __future__ import annotations

import uuid
from typing import cast

import redis

from dispatchq.store import keys
from dispatchq.store.scripts import SCRIPTS


class Lease:
    """The leader lease: `hold()` takes or renews it, True while this tracker leads."""

    def __init__(self, client: redis.Redis, holder: str | None = None) -> None:
        self.client = client
        self.holder = holder or f"tracker-{uuid.uuid4().hex[:12]}"
        self._script = client.register_script(SCRIPTS["lease"])

    def hold(self) -> bool:
        return bool(
            self._script(
                keys=[keys.TRACKER_LEASE, keys.TRACKERS],
                args=[self.holder, keys.TRACKER_LEASE_MS, keys.TRACKER_TTL],
            )
        )

    def release(self) -> None:
        self.client.zrem(keys.TRACKERS, self.holder)
        if self.client.get(keys.TRACKER_LEASE) == self.holder.encode():
            self.client.delete(keys.TRACKER_LEASE)


def reconcile_all(client: redis.Redis, rate: float, now: float) -> int:
    """Make every followed child due, `rate` per second from now (ZADD XX LT: a child due
    sooner keeps its time). Returns how many are followed."""
    members = cast(list[bytes], client.zrange(keys.FOLLOW, 0, -1))
    pipe = client.pipeline(transaction=False)
    for n, member in enumerate(members):
        pipe.zadd(keys.FOLLOW, {member: now + n / rate}, xx=True, lt=True)
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return len(members)
