"""dispatchq: a durable, distributed dispatcher for HashiCorp Nomad parameterized jobs.

`enqueue`, `result` and `wait` use one process-wide `Producer` built from the environment
(`DISPATCHQ_*`); build your own `Producer(settings)` for anything else, and an
`AsyncProducer` (the same API, awaited) in an asyncio service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatchq.producer.aio import AsyncProducer
    from dispatchq.producer.api import Producer, RequestStatus

__all__ = ["AsyncProducer", "Producer", "enqueue", "result", "wait"]

_default: Producer | None = None


def _producer() -> Producer:
    global _default  # noqa: PLW0603  (one lazily built default, like requests' module API)
    if _default is None:
        from dispatchq.producer.api import Producer  # noqa: PLC0415  (keeps `import dispatchq` light)

        _default = Producer()
    return _default


def enqueue(job_id: str, **kwargs: Any) -> str:
    """Enqueue one dispatch request; see `Producer.enqueue`."""
    return _producer().enqueue(job_id, **kwargs)


def result(request_id: str) -> RequestStatus:
    """The state or outcome of one request; see `Producer.result`."""
    return _producer().result(request_id)


def wait(request_ids: list[str], timeout: float | None = None) -> dict[str, RequestStatus]:
    """Await outcomes; see `Producer.wait`."""
    return _producer().wait(request_ids, timeout)


def __getattr__(name: str) -> Any:
    if name == "Producer":
        from dispatchq.producer.api import Producer  # noqa: PLC0415

        return Producer
    if name == "AsyncProducer":
        from dispatchq.producer.aio import AsyncProducer  # noqa: PLC0415

        return AsyncProducer
    raise AttributeError(name)
