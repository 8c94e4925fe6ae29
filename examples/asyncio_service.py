"""An asyncio web service that dispatches Nomad jobs through dispatchq, on Starlette
(FastAPI is Starlette underneath: the same calls work in its handlers).

    pip install 'dispatchq[web]'                    # Starlette and uvicorn
    export DISPATCHQ_REDIS_URL=redis://127.0.0.1:6379/0 ENCODE_JOB=video-encode
    uvicorn examples.asyncio_service:app --port 8000

    POST /encodes  {"meta": {...}, "payload": "..."}    202 {"request_id": ...}
    GET  /encodes/<request id>?wait=30                  its status; waits up to `wait`
                                                        seconds for the child to end
    POST /batches  {"items": [{"meta": {...}}, ...]}    202 {"batch_id": ...}
    GET  /batches/<batch id>/progress                   Server-Sent Events: the batch's
                                                        counts as they change, to its end
    GET  /health                                        ok

Each encode is followed `until` its child job has finished. A handler that waits for one
awaits its outcome (woken when it is stored): the event loop goes on serving every other
request meanwhile, and a client that goes away cancels its wait, which leaves nothing
behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from dispatchq import AsyncProducer
from dispatchq.errors import InvalidRequest

JOB = os.environ.get("ENCODE_JOB", "video-encode")
producer: AsyncProducer


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    global producer  # one client for the process, made on its event loop
    async with AsyncProducer() as producer:
        yield


async def start_encode(request: Request) -> Response:
    body = await request.json()
    payload = body.get("payload")
    try:
        rid = await producer.enqueue(
            JOB, meta=body.get("meta") or {}, until="finished",
            payload=payload.encode() if isinstance(payload, str) else None,
        )  # fmt: skip
    except InvalidRequest as err:
        return JSONResponse({"error": str(err)}, status_code=400)
    return JSONResponse({"request_id": rid}, status_code=202)


async def encode(request: Request) -> Response:
    rid = request.path_params["request_id"]
    wait = min(float(request.query_params.get("wait", "0")), 300.0)
    status = (await producer.wait([rid], timeout=wait))[rid] if wait > 0 else (
        await producer.result(rid))  # fmt: skip
    return JSONResponse(status.to_json())


async def start_batch(request: Request) -> Response:
    body = await request.json()
    try:
        batch_id = await producer.dispatch_batch(JOB, body.get("items") or [], until="finished")
    except InvalidRequest as err:
        return JSONResponse({"error": str(err)}, status_code=400)
    return JSONResponse({"batch_id": batch_id}, status_code=202)


async def batch_progress(request: Request) -> Response:
    batch_id = request.path_params["batch_id"]
    if await producer.batch_status(batch_id) is None:
        return JSONResponse({"error": f"no batch {batch_id}"}, status_code=404)

    async def events() -> AsyncIterator[str]:
        async for status in producer.batch_progress(batch_id, every=0.5):
            yield f"data: {json.dumps(status.to_json())}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def health(_: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[
        Route("/encodes", start_encode, methods=["POST"]),
        Route("/encodes/{request_id}", encode),
        Route("/batches", start_batch, methods=["POST"]),
        Route("/batches/{batch_id}/progress", batch_progress),
        Route("/health", health),
    ],
    lifespan=lifespan,
)
