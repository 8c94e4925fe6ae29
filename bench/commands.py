"""Where each Redis command goes: every command redis-server runs while a bench measures,
attributed to the step of dispatchq that sent it, from Redis's own MONITOR feed.

`CommandLog` is a context manager over a Redis URL: it reads MONITOR on a connection of
its own while the block runs. A command a script runs (MONITOR shows it as `[0 lua]`,
right after the EVALSHA/EVAL that ran it) counts for that script, which is named by its
SHA-1 (`dispatchq.store.scripts.SCRIPTS`); a plain command is named by its key
(`CALLERS`). The table has, per request, the commands of each step and how many of them
were round trips (what a client sent: an EVALSHA counts once, its script's commands not).

MONITOR slows Redis down: use the counts, never the rates, of a run measured with it
(`python -m bench.e2e --by-caller` makes one extra run for the table).
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from dispatchq.store import keys
from dispatchq.store.scripts import SCRIPTS

STEPS: dict[str, str] = {
    "enqueue": "enqueue (producer)",
    "lane_push": "enqueue (producer)",
    "batch_total": "enqueue (producer)",
    "fetch_fair": "fetch",
    "begin": "take",
    "rate_take": "backpressure",
    "rate_read": "backpressure",
    "rate_cut": "backpressure",
    "children_slot": "backpressure",
    "children_refresh": "backpressure",
    "dispatched": "write-ahead",
    "done": "done (+ events, batch counters)",
    "store_result": "done (+ events, batch counters)",
    "handoff": "hand-off (until finished)",
    "stage": "tracker",
    "lease": "leases",
    "reclaim": "leases",
    "requeue": "retries",
    "retry": "retries",
}
"""The step each script is part of, by script name."""

CALLERS: list[tuple[str, str]] = [
    (f"{keys.INFLIGHT}:", "ack"),
    (keys.INFLIGHT, "leases"),
    (f"{keys.PREFIX}:lease:", "leases"),
    (keys.WORKERS, "heartbeats"),
    (keys.TRACKERS, "leases"),
    (keys.TRACKER_LEASE, "leases"),
    (keys.RATE, "backpressure"),
    (f"{keys.PREFIX}:children", "backpressure"),
    (keys.lanes(""), "lanes"),
    (keys.LANE, "lanes"),
    (keys.batch(""), "batch status (the bench's polling)"),
    (keys.batch_requests(""), "batch status (the bench's polling)"),
    (keys.request(""), "records"),
    (keys.CELERY_RESULT_PREFIX, "results"),
    (keys.EVENTS, "events"),
    (keys.FOLLOW, "tracker"),
    (keys.RETRY_DUE, "retries"),
    (keys.backlog(""), "backlog samples"),
    ("_kombu.", "celery (bindings)"),
    ("celeryev", "celery (events)"),
    ("unacked", "celery (unacked)"),
]
"""Plain commands' step, by the start of their first key (first match)."""

_BY_SHA = {hashlib.sha1(text.encode()).hexdigest(): name for name, text in SCRIPTS.items()}


@dataclass
class Tally:
    """Counts per command name and per step: `commands` (every command Redis ran) and
    `trips` (what clients sent)."""

    by_command: Counter[str] = field(default_factory=Counter)
    by_step: Counter[str] = field(default_factory=Counter)
    trips_by_step: Counter[str] = field(default_factory=Counter)
    by_step_command: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    """A command of each step not named by a script or key prefix, as it was sent."""

    @property
    def total(self) -> int:
        return sum(self.by_command.values())

    def table(self, requests: int, top: int = 25) -> str:
        lines = [f"{'step':<38}{'commands':>10}{'round trips':>13}   (per request)"]
        for step, n in self.by_step.most_common():
            trips = self.trips_by_step[step] / requests
            lines.append(f"{step:<38}{n / requests:>10.2f}{trips:>13.2f}")
        total_trips = sum(self.trips_by_step.values()) / requests
        lines.append(f"{'total':<38}{self.total / requests:>10.2f}{total_trips:>13.2f}")
        lines.append(f"\n{'step: command':<52}{'per request':>10}")
        for (step, name), n in self.by_step_command.most_common():
            if n / requests >= 0.05:
                lines.append(f"{step + ': ' + name:<52}{n / requests:>10.2f}")
        lines.append(f"\n{'command':<38}{'per request':>10}")
        for name, n in self.by_command.most_common(top):
            lines.append(f"{name:<38}{n / requests:>10.2f}")
        for step, example in sorted(self.examples.items()):
            lines.append(f"  e.g. {step}: {example[:90]}")
        return "\n".join(lines)


def step_of(command: str, args: list[str]) -> str:
    """The step a plain (client-sent) command belongs to."""
    name = command.upper()
    if name in ("EVALSHA", "EVAL"):
        script = _BY_SHA.get(args[0]) if name == "EVALSHA" else _BY_SHA.get(
            hashlib.sha1(args[0].encode()).hexdigest())  # fmt: skip
        return STEPS.get(script or "", f"script {script or '?'}")
    if name in ("PUBLISH", "SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE"):
        channel = args[0] if args else ""
        return "celery (pidbox, events)" if "pidbox" in channel or "celeryev" in channel \
            else f"pub/sub {channel.split(':')[0]}"  # fmt: skip
    key = args[0] if args else ""
    for prefix, step in CALLERS:
        if key.startswith(prefix):
            return step
    if name in ("BRPOP", "LPUSH", "RPUSH", "LLEN", "RPOPLPUSH", "LMOVE"):
        return "queue"
    return f"other ({name})"


class CommandLog:
    """Reads Redis's MONITOR feed while the `with` block runs (see the module doc)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.tally = Tally()
        self._ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._read, name="monitor", daemon=True)

    def __enter__(self) -> Tally:
        self._thread.start()
        self._ready.wait(10)
        return self.tally

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self.client.ping()  # one more line, so the reader wakes and sees the stop
        self._thread.join(10)
        self.client.close()

    def _read(self) -> None:
        script_step = "?"
        with self.client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self._ready.set()
            while not self._stop:
                entry: dict[str, Any] = monitor.next_command()
                words = _words(entry["command"])
                if not words:
                    continue
                command, args = words[0].upper(), words[1:]
                if command == "MONITOR" or (command == "PING" and self._stop):
                    continue
                self.tally.by_command[command] += 1
                if entry.get("client_type") == "lua":
                    self.tally.by_step[script_step] += 1
                    self.tally.by_step_command[script_step, command] += 1
                    continue
                step = step_of(command, args)
                if command in ("EVALSHA", "EVAL"):
                    script_step = step
                self.tally.by_step[step] += 1
                self.tally.trips_by_step[step] += 1
                self.tally.by_step_command[step, command] += 1
                if step.startswith("other"):
                    self.tally.examples.setdefault(step, entry["command"])


def _words(text: str) -> list[str]:
    """redis-py's `Monitor` gives the command as one string of space-separated words
    (quotes stripped): enough for a command's name and its first arguments."""
    return text.split(" ", 4)[:4] if text else []
