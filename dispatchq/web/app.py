"""The dashboard: `dispatchq web` (Starlette, Jinja2 templates, htmx for the live parts).

Pages are rendered on the server; a live part (a batch's counts, the fleet) is a fragment
that htmx fetches again every second. Every read is bounded whatever the size of a batch:
a batch page is one HGETALL of its counters and one LRANGE of its first failures
(`dispatchq.store.batches`), never a scan of its items.

Read-only unless `DISPATCHQ_WEB_TOKEN` is set. An action (retry a batch's failures, cancel a
batch, replay or purge dead letters) is a POST whose form carries that token, compared in
constant time: a page of another site cannot forge one without knowing it (no cookie or
other ambient credential is ever accepted), and the token is never rendered back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import redis
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dispatchq.config.settings import Settings
from dispatchq.core.render import render
from dispatchq.errors import DispatchqError
from dispatchq.nomad.client import NomadClient
from dispatchq.nomad.config import NomadConfig
from dispatchq.store import dlq, keys
from dispatchq.store.batches import CANCELLED, BatchStatus, BatchStore
from dispatchq.store.liveness import live_workers
from dispatchq.store.records import RequestRecord
from dispatchq.store.results import outcome_from_meta
from dispatchq.store.retries import BatchRetrier

HERE = Path(__file__).parent
FAILURES_SHOWN = 50
BATCHES_SHOWN = 50


class Dashboard:
    """The pages, over one Redis client and the settings."""

    def __init__(self, settings: Settings, client: redis.Redis, token: str = "") -> None:
        self.settings = settings
        self.client = client
        self.token = token
        self.batches = BatchStore(client, settings.result_ttl)
        self.nomad_ui = ""
        self.nomad: NomadClient | None = None
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape()
        )
        self.templates.globals["quote"] = lambda text: quote(str(text), safe="")

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("actions", bool(self.token))
        html = self.templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status)

    # -- pages -------------------------------------------------------------------------

    async def batches_page(self, request: Request) -> Response:
        """The newest batches; `?tenant=` keeps one tenant's."""
        tenant = request.query_params.get("tenant")
        recent = self.batches.recent(BATCHES_SHOWN)
        shown = [_batch_view(b) for b in recent if tenant is None or b.tenant == tenant]
        tenants = sorted({b.tenant for b in recent if b.tenant})
        return self.page("batches.html", batches=shown, tenants=tenants, tenant=tenant)

    async def batch_page(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        status = self.batches.status(batch_id)
        if status is None:
            return self.page("missing.html", 404, what=f"batch {batch_id}")
        failures = self.batches.errors(batch_id, FAILURES_SHOWN)
        return self.page("batch.html", batch=_batch_view(status), failures=failures,
                         notice=request.query_params.get("notice", ""))  # fmt: skip

    async def batch_live(self, request: Request) -> Response:
        """The live part of a batch's page: its counts and first failures."""
        batch_id = request.path_params["batch_id"]
        status = self.batches.status(batch_id)
        if status is None:
            return HTMLResponse("", status_code=404)
        failures = self.batches.errors(batch_id, FAILURES_SHOWN)
        return self.page("_batch_live.html", batch=_batch_view(status), failures=failures)

    async def request_page(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.celery_result(request_id))
        pipe.hgetall(keys.request(request_id))
        raw_meta, raw_record = pipe.execute()
        record = RequestRecord.from_hash(request_id, raw_record) if raw_record else None
        job_id = record.job_id if record is not None else ""
        outcome = outcome_from_meta(json.loads(raw_meta), job_id) if raw_meta else None
        if record is None and outcome is None:
            return self.page("missing.html", 404, what=f"request {request_id}")
        lines = [line.text for event in (outcome.events if outcome else []) for line in
                 render(event, verbose=True)]  # fmt: skip
        child = (outcome.dispatched_job_id if outcome else "") or (record.dispatched_job_id
                                                                   if record else "")  # fmt: skip
        started = _clock(outcome.timings.started_at) if outcome else ""
        return self.page("request.html", request_id=request_id, record=record,
                         outcome=outcome.to_json() if outcome else None, lines=lines,
                         child=child, child_url=self._child_url(child),
                         started=started)  # fmt: skip

    def _child_url(self, child: str) -> str:
        if not child or not self.nomad_ui:
            return ""
        return f"{self.nomad_ui}/ui/jobs/{quote(child, safe='')}"

    async def fleet_page(self, request: Request) -> Response:
        return self.page("fleet.html", **self._fleet())

    async def fleet_part(self, request: Request) -> Response:
        return self.page("_fleet.html", **self._fleet())

    def _fleet(self) -> dict[str, Any]:
        workers = live_workers(self.client, self.settings.queue)
        leader = cast(bytes | None, self.client.get(keys.TRACKER_LEASE))
        notifiers: list[dict[str, Any]] = []
        stream = self.settings.events_stream
        if stream:
            try:
                groups: Any = self.client.xinfo_groups(stream)
                notifiers = [{"name": g["name"].decode(), "pending": g["pending"],
                              "lag": g.get("lag")} for g in groups]  # fmt: skip
            except redis.ResponseError:
                notifiers = []
        return {"workers": workers, "leader": leader.decode() if leader else "",
                "notifiers": notifiers, "queue": self.settings.queue}  # fmt: skip

    async def queue_page(self, request: Request) -> Response:
        queue = self.settings.queue
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(queue)
        pipe.hgetall(keys.lanes(queue))
        waiting, lanes = pipe.execute()
        lane_ids = sorted(k.decode() for k in lanes)
        pipe = self.client.pipeline(transaction=False)
        for batch_id in lane_ids:
            pipe.llen(keys.lane(batch_id))
        lengths = pipe.execute() if lane_ids else []
        return self.page("queue.html", queue=queue, waiting=waiting,
                         lanes=list(zip(lane_ids, lengths, strict=True)))  # fmt: skip

    async def dlq_page(self, request: Request) -> Response:
        entries = [{**e.to_json(), "replayable": e.replayable, "digest": _digest(e.raw)}
                   for e in reversed(dlq.entries(self.client))]  # fmt: skip
        return self.page("dlq.html", entries=entries, notice=request.query_params.get("notice"))

    async def dlq_action(self, request: Request) -> Response:
        """Replay one dead letter (`entry`: its digest) or purge them all."""
        form = await request.form()
        refusal = self._refusal(str(form.get("token", "")))
        if refusal is not None:
            return refusal
        if request.path_params["action"] == "purge":
            notice = f"purged {dlq.purge(self.client)} dead letter(s)"
        elif request.path_params["action"] == "replay":
            wanted = str(form.get("entry", ""))
            found = [e for e in dlq.entries(self.client) if _digest(e.raw) == wanted]
            if not found or not found[0].replayable:
                notice = "no such dead letter, or it cannot be replayed"
            else:
                dlq.replay(self.client, found[0], self.settings.result_ttl)
                notice = f"replayed {found[0].task_id or 'the message'} onto {found[0].queue}"
        else:
            return self.page("missing.html", 404, what="no such action")
        return RedirectResponse(f"/dead-letters?notice={quote(notice)}", status_code=303)

    def _refusal(self, given: str) -> Response | None:
        """None when `given` is the action token; else the refusal to answer with."""
        if self.token and hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        refusal = "actions are off (no DISPATCHQ_WEB_TOKEN)" if not self.token else (
            "wrong or missing token")  # fmt: skip
        return self.page("missing.html", 403, what=f"nothing done: {refusal}")

    async def search(self, request: Request) -> Response:
        """A batch ID, else a request ID, else a child job's ID (Nomad keeps the dispatch's
        idempotency token, `dispatchq-<request ID>`, in the child): the page it names."""
        text = request.query_params.get("q", "").strip()
        if text and self.nomad is not None and "/dispatch-" in text:
            request_id = await run_in_threadpool(self._request_of_child, text)
            if request_id:
                return RedirectResponse(f"/requests/{quote(request_id, safe='')}",
                                        status_code=303)  # fmt: skip
        if text and self.client.exists(keys.batch(text)):
            return RedirectResponse(f"/batches/{quote(text, safe='')}", status_code=303)
        if text and (self.client.exists(keys.request(text))
                     or self.client.exists(keys.celery_result(text))):  # fmt: skip
            return RedirectResponse(f"/requests/{quote(text, safe='')}", status_code=303)
        return self.page("missing.html", 404, what=f"a batch or request {text!r}")

    def _request_of_child(self, child: str) -> str:
        assert self.nomad is not None
        try:
            job, _ = self.nomad.read_job(child)
        except DispatchqError:
            return ""
        token = job.get("DispatchIdempotencyToken")
        prefix = "dispatchq-"
        return token[len(prefix):] if isinstance(token, str) and token.startswith(prefix) else ""

    # -- actions -----------------------------------------------------------------------

    async def batch_action(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        action = request.path_params["action"]
        if action not in ("retry", "cancel"):
            return self.page("missing.html", 404, what=f"no action {action!r}")
        form = await request.form()
        refusal = self._refusal(str(form.get("token", "")))
        if refusal is not None:
            return refusal
        status = self.batches.status(batch_id)
        if status is None:
            return self.page("missing.html", 404, what=f"batch {batch_id}")
        if action == "retry":
            if status.state == CANCELLED:
                notice = "the batch was cancelled: nothing to retry"
            else:
                retrier = BatchRetrier(self.client, queue=self.settings.queue,
                                       ttl=self.settings.result_ttl)  # fmt: skip
                report = retrier.retry_batch(batch_id)
                notice = f"retrying {report.retried} item(s)"
        else:
            self.batches.cancel(batch_id)
            notice = "cancelled: nothing more of it is dispatched"
        target = f"/batches/{quote(batch_id, safe='')}?notice={quote(notice)}"
        return RedirectResponse(target, status_code=303)


def _clock(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _digest(raw: str) -> str:
    """A dead letter's name in a form: the start of its SHA-256."""
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _batch_view(status: BatchStatus) -> dict[str, Any]:
    data = status.to_json()
    data["tenant"] = status.tenant
    data["created_at"] = status.created_at
    data["percent"] = round(100 * status.done / status.total) if status.total else 0
    return data


def create_app(settings: Settings, token: str = "", nomad_address: str = "") -> Starlette:
    """The dashboard's ASGI app (`dispatchq web` serves it)."""
    board = Dashboard(settings, settings.redis.client(), token)
    board.nomad = NomadClient(NomadConfig.from_env(), timeout=5.0, pool_size=2)
    if nomad_address.startswith(("http://", "https://")):
        board.nomad_ui = nomad_address.rstrip("/")
    routes = [
        Route("/", board.batches_page),
        Route("/batches/{batch_id:path}/live", board.batch_live),
        Route("/batches/{batch_id:path}/{action:str}", board.batch_action, methods=["POST"]),
        Route("/batches/{batch_id:path}", board.batch_page),
        Route("/requests/{request_id:path}", board.request_page),
        Route("/fleet", board.fleet_page),
        Route("/fleet/live", board.fleet_part),
        Route("/queue", board.queue_page),
        Route("/dead-letters", board.dlq_page),
        Route("/dead-letters/{action:str}", board.dlq_action, methods=["POST"]),
        Route("/search", board.search),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes)
