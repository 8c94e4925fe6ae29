"""Celery app and thin tasks that call `dispatch`."""
