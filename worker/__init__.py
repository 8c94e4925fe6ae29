"""Celery app and thin tasks that call `dispatch`: `celery -A worker worker`."""

from worker.app import app

__all__ = ["app"]
