"""Group commit: calls made at about the same time by many threads (or greenlets) of one
process joined into one call, so that N requests taken, dispatched, handed off or ended
together cost one round trip and one script run, not N (`dispatchq.store.records`), and N
acknowledgements one pipeline (`dispatchq.broker.fetch`).

No timer and no thread of its own: the first caller to find no call under way runs one
with everything waiting (at most `most`), and the others wait for its answer. Whatever
arrived meanwhile is the next group, run by the first of it, woken for that. An idle
process so runs each call alone, at once; a busy one groups as many as arrive while one
call is out.

A call of the group that Redis refuses (a key of another type) is answered with its
error, to its caller alone: the script goes on with the others (lua/_group.lua). A whole
group refused (`redis.ResponseError` for the script call itself) is run again one by one,
so that only the call that caused it fails (the scripts' calls are idempotent: an ending
stored twice counts once). Any other error (the connection) fails every call of the
group, each to be retried by its own caller; a lost connection or a timeout fails the
callers waiting for the next group too, at once: in a failover each caller would otherwise
wait for the call before its own to time out, then for its own (twice the outage).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import redis
from redis.commands.core import Script

T = TypeVar("T")
R = TypeVar("R")

MOST = 64
"""Calls per group at most: a script runs alone in Redis, so one must stay short."""

Call = tuple[list[Any], list[Any]]
"""One call's part of a group script's call (lua/_group.lua): its keys and its arguments."""


def script_group(script: Script) -> Callable[[Sequence[Call]], list[Any]]:
    """How a group of calls runs a script written for groups (`run_group`, lua/_group.lua):
    one call of it with every call's keys and arguments, in the layout it reads."""

    def run(calls: Sequence[Call]) -> list[Any]:
        counts: list[Any] = [len(calls)]
        flat_keys: list[Any] = []
        flat_args: list[Any] = []
        for call_keys, args in calls:
            counts += [len(call_keys), len(args)]
            flat_keys += call_keys
            flat_args += args
        return list(script(keys=flat_keys, args=counts + flat_args))

    return run


class _Waiting(Generic[T, R]):
    __slots__ = ("answer", "answered", "error", "item", "lead", "ready")

    def __init__(self, item: T) -> None:
        self.item = item
        self.ready = threading.Event()
        self.lead = False  # this caller runs the next group
        self.answered = False
        self.answer: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """`run(items)` answers each of `items` in order; `commit(item)` is one item's answer,
    from a call shared with the items committed at the same time."""

    def __init__(self, run: Callable[[Sequence[T]], list[R]], most: int = MOST) -> None:
        self._run = run
        self._most = most
        self._lock = threading.Lock()
        self._queue: list[_Waiting[T, R]] = []
        self._running = False

    def commit(self, item: T) -> R:
        mine: _Waiting[T, R] = _Waiting(item)
        with self._lock:
            self._queue.append(mine)
            if not self._running:
                self._running = mine.lead = True
        if not mine.lead:
            try:
                mine.ready.wait()
            except BaseException:  # stopped while it waits (a time limit): out of the queue
                self._leave(mine)
                raise
        if mine.lead and not mine.answered:
            try:
                self._run_next()
            except BaseException:
                self._leave(mine)  # stopped before its group was taken: the next one's turn
                raise
        if mine.error is not None:
            raise mine.error
        return mine.answer  # type: ignore[return-value]

    def _run_next(self) -> None:
        """Run the group at the head of the queue (the caller's own is in it), then hand
        the next group to its first caller, or stop if none waits."""
        with self._lock:
            group = self._queue[: self._most]
            del self._queue[: self._most]
        lost: BaseException | None = None
        try:
            lost = self._answer(group)
        finally:
            with self._lock:
                if lost is not None:  # Redis out of reach: those waiting fail now, not later
                    group += self._queue
                    self._queue = []
                    for waiting in group:
                        waiting.error = waiting.error or lost
                for waiting in group:
                    waiting.answered = True
                self._hand_on()
            for waiting in group:
                waiting.ready.set()

    def _hand_on(self) -> None:
        """(Lock held.) The next group to the first caller waiting, or none running."""
        if self._queue:
            self._queue[0].lead = True
            self._queue[0].ready.set()
        else:
            self._running = False

    def _leave(self, mine: _Waiting[T, R]) -> None:
        """A caller that stops waiting: its call is not made (if its group has not started),
        and the next group is handed on if it was this caller's to run: nobody waits for
        a caller that left."""
        with self._lock:
            if mine in self._queue:
                self._queue.remove(mine)
            if mine.lead and not mine.answered:
                self._hand_on()

    def _answer(self, group: list[_Waiting[T, R]]) -> BaseException | None:
        """Answer the group (each its answer or error); the error, if Redis could not be
        reached (the callers still waiting get it too: see `_run_next`)."""
        try:
            answers = self._run([w.item for w in group])
        except redis.ResponseError as err:
            if len(group) == 1:
                group[0].error = err
                return None
            for waiting in group:  # one by one: only the one Redis refused fails
                self._answer([waiting])
            return None
        except Exception as err:  # noqa: BLE001  (each caller raises it, to retry as it would alone)
            for waiting in group:
                waiting.error = err
            return err if isinstance(err, redis.ConnectionError | redis.TimeoutError) else None
        except BaseException as err:  # the running caller is stopped (a time limit...)
            cut = redis.ConnectionError(f"a grouped call was cut short: {type(err).__name__}")
            for waiting in group:
                waiting.error = cut
            raise
        for waiting, answer in zip(group, answers, strict=True):
            if isinstance(answer, redis.ResponseError):  # this call's alone (lua/_group.lua)
                waiting.error = answer
            else:
                waiting.answer = answer
        return None
