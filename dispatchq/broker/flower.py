"""The Celery app Flower monitors dispatchq with: `dispatchq flower` runs
`celery -A dispatchq.broker.flower flower`.

Not the worker's app (`dispatchq.worker.app`): that one fetches through dispatchq's own transport
class, whose broker URL Flower cannot read queue lengths from, and starts the worker's
background threads. This one has the same broker, queue and result backend on kombu's
plain Redis transport, and is the current and default app, since Flower reads task results
through `AsyncResult(task_id)` with no app named.
"""

from __future__ import annotations

from celery import Celery

from dispatchq.broker.app import make_app
from dispatchq.config.settings import load_settings

app: Celery = make_app(load_settings())
app.set_current()
app.set_default()
