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
from dispatchq.core.cancel import cancel_batch
from dispatchq.core.render import render
from dispatchq.errors import DispatchqError
from dispatchq.nomad.client import NomadClient
from dispatchq.nomad.config import NomadConfig
from dispatchq.store import dlq, keys, lanes, runtimes
from dispatchq.store.backlog import Sample, history
from dispatchq.store.batches import CANCELLED, BatchStatus, BatchStore
from dispatchq.store.liveness import heard_trackers, heard_workers
from dispatchq.store.records import RequestRecord
from dispatchq.store.results import outcome_from_meta
from dispatchq.store.retries import BatchRetrier

HERE = Path(__file__).parent
FAILURES_SHOWN = 50
BATCHES_SHOWN = 50


class Dashboard:
    """The pages, over one Redis client and the settings."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        nomad: NomadClient,
        token: str = "",
        nomad_ui: str = "",
    ) -> None:
        self.settings = settings
        self.client = client
        self.nomad = nomad
        self.token = token
        self.nomad_ui = nomad_ui
        """Where Nomad's own UI is: its address, when it is an HTTP URL."""
        self.batches = BatchStore(client, settings.result_ttl)
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
        return self.page("batch.html", **self._batch(status),
                         notice=request.query_params.get("notice", ""))  # fmt: skip

    async def batch_live(self, request: Request) -> Response:
        """The live part of a batch's page: its counts and first failures."""
        batch_id = request.path_params["batch_id"]
        status = self.batches.status(batch_id)
        if status is None:
            return HTMLResponse("", status_code=404)
        return self.page("_batch_live.html", **self._batch(status))

    def _batch(self, status: BatchStatus) -> dict[str, Any]:
        failures = self.batches.errors(status.batch_id, FAILURES_SHOWN)
        for failure in failures:
            failure["attempt"] = _attempt(str(failure.get("request_id", "")))
        return {"batch": _batch_view(status), "failures": failures}

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
        namespace = record.namespace if record is not None else ""
        events = await run_in_threadpool(self._task_events, child, namespace) if child else None
        return self.page("request.html", request_id=request_id, record=record,
                         outcome=outcome.to_json() if outcome else None, lines=lines,
                         child=child, child_url=self._child_url(child), started=started,
                         task_events=events)  # fmt: skip

    def _task_events(self, child: str, namespace: str) -> list[dict[str, Any]] | None:
        """Each task's events, read from Nomad now (per allocation, oldest first); None
        when Nomad cannot say (unreachable, or the child was garbage-collected)."""
        try:
            allocs = self.nomad.job_allocations(child, namespace=namespace or None)[0]
        except DispatchqError:
            return None
        rows: list[dict[str, Any]] = []
        for alloc in sorted(allocs, key=lambda a: cast(int, a.get("CreateIndex") or 0)):
            states = cast(dict[str, Any], alloc.get("TaskStates") or {})
            for task, state in sorted(states.items()):
                for event in (state or {}).get("Events") or []:
                    rows.append({"alloc": str(alloc.get("ID", ""))[:8], "task": task,
                                 "time": _nanos_clock(event.get("Time")),
                                 "type": event.get("Type", ""),
                                 "message": event.get("DisplayMessage") or ""})  # fmt: skip
        return rows

    def _child_url(self, child: str) -> str:
        if not child or not self.nomad_ui:
            return ""
        return f"{self.nomad_ui}/ui/jobs/{quote(child, safe='')}"

    async def fleet_page(self, request: Request) -> Response:
        return self.page("fleet.html", **self._fleet())

    async def fleet_part(self, request: Request) -> Response:
        return self.page("_fleet.html", **self._fleet())

    def _fleet(self) -> dict[str, Any]:
        workers = heard_workers(self.client, self.settings.queue)
        raw_leader = cast(bytes | None, self.client.get(keys.TRACKER_LEASE))
        leader = raw_leader.decode() if raw_leader else ""
        trackers = [{"id": name, "ago": ago, "leads": name == leader}
                    for name, ago in sorted(heard_trackers(self.client))]  # fmt: skip
        return {"workers": workers, "leader": leader, "trackers": trackers,
                "notifiers": self._notifiers(), "queue": self.settings.queue}  # fmt: skip

    def _notifiers(self) -> list[dict[str, Any]]:
        """The notifier group's consumers, with how long since each last read the stream
        (a notifier reads at least every few seconds while it runs)."""
        stream = self.settings.events_stream
        if not stream:
            return []
        try:
            consumers: Any = self.client.xinfo_consumers(stream, keys.NOTIFIER_GROUP)
        except redis.ResponseError:  # no stream or no group yet
            return []
        return [{"name": _text(c["name"]), "pending": c["pending"], "ago": c["idle"] / 1000}
                for c in consumers]  # fmt: skip

    async def queue_page(self, request: Request) -> Response:
        queue = self.settings.queue
        now = lanes.backlog(self.client, queue)
        rows = [(tenant, batch_id, waiting) for tenant, batches in sorted(now.batches.items())
                for batch_id, waiting in sorted(batches.items())]  # fmt: skip
        return self.page("queue.html", queue=queue, backlog=now, lanes=rows,
                         chart=backlog_chart(history(self.client, queue)),
                         every=keys.BACKLOG_EVERY)  # fmt: skip

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
        if text and "/dispatch-" in text:
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
            stop = form.get("stop_dispatched") == "on"
            cancelled = await run_in_threadpool(
                cancel_batch, self.batches, self.nomad, batch_id, stop_dispatched=stop
            )
            notice = "cancelled: nothing more of it is dispatched"
            if cancelled is not None and stop:
                notice += f"; stopped {cancelled.stopped} dispatched child job(s)"
                if cancelled.errors:
                    notice += f", {len(cancelled.errors)} could not be: {cancelled.errors[0]}"
        target = f"/batches/{quote(batch_id, safe='')}?notice={quote(notice)}"
        return RedirectResponse(target, status_code=303)


def _clock(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _nanos_clock(nanos: Any) -> str:
    """A Nomad event's time (Unix nanoseconds) to the millisecond, UTC."""
    if not isinstance(nanos, int) or nanos <= 0:
        return ""
    return datetime.fromtimestamp(nanos / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _attempt(request_id: str) -> int:
    """The attempt a batch item's request ID is (`keys.attempt_id`)."""
    if not keys.is_reserved_id(request_id):
        return 1
    return int(request_id.rsplit("~", 1)[1])


def _digest(raw: str) -> str:
    """A dead letter's name in a form: the start of its SHA-256."""
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _batch_view(status: BatchStatus) -> dict[str, Any]:
    data = status.to_json()
    data["tenant"] = status.tenant
    data["created_at"] = status.created_at
    data["percent"] = round(100 * status.done / status.total) if status.total else 0
    data["finished_clock"] = _clock(status.finished_at) if status.finished_at else ""
    data["event_id"] = status.event_id
    data["has_webhook"] = status.has_webhook
    data["webhook_clock"] = _clock(status.webhook["at"]) if status.webhook.get("at") else ""
    data["histogram"] = run_time_bars(status.run_times)
    return data


def run_time_bars(counts: list[int]) -> list[dict[str, Any]]:
    """The run-time histogram's bars: label, count, height in percent of the tallest."""
    tallest = max(counts, default=0) or 1
    return [{"label": runtimes.label(i), "count": n, "height": round(100 * n / tallest)}
            for i, n in enumerate(counts)]  # fmt: skip


CHART_WIDTH, CHART_HEIGHT = 720, 160


def backlog_chart(samples: list[Sample]) -> dict[str, Any]:
    """The backlog chart's SVG polyline points (oldest left), and its scale."""
    if len(samples) < 2:
        return {"points": "", "samples": len(samples)}
    start, span = samples[0].at, (samples[-1].at - samples[0].at) or 1.0
    peak = max(s.total for s in samples)
    points = " ".join(
        f"{CHART_WIDTH * (s.at - start) / span:.1f},"
        f"{CHART_HEIGHT * (1 - s.total / (peak or 1)):.1f}"
        for s in samples
    )
    shown = f"{span / 60:.0f} min" if span >= 120 else f"{span:.0f} s"
    return {"points": points, "peak": peak, "samples": len(samples), "span": shown,
            "latest": samples[-1].total}  # fmt: skip


def create_app(settings: Settings, token: str = "", nomad_address: str = "") -> Starlette:
    """The dashboard's ASGI app (`dispatchq web` serves it)."""
    nomad = NomadClient(NomadConfig.from_env(), timeout=5.0, pool_size=2)
    ui = nomad_address.rstrip("/") if nomad_address.startswith(("http://", "https://")) else ""
    board = Dashboard(settings, settings.redis.client(), nomad, token, ui)
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
