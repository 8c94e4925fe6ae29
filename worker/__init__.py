"""The worker: Celery tasks that run requests (`tasks`), their retry policy (`policy`), the
parts a worker process holds (`runtime`), its metrics and health. `celery -A
dispatchq.worker worker` runs it (as `dispatchq worker` does)."""

from dispatchq.worker.app import app

__all__ = ["app"]
