"""Trivial-handler throughput of the HTTP stacks considered for nomadsim, under wrk.

    .venv/bin/python -m bench.nomadsim_frameworks [--duration 4] [--runs 3]

Each server answers `GET /v1/status/leader` with a small JSON string: aiohttp's
low-level `web.Server` (what nomadsim used until its own layer, `nomadsim/httpserver.py`,
measured at about twice the rate: see dispatchq/nomadsim/README.md), aiohttp's `web.Application`
router (aiohttp is a dev dependency for this bench alone), and,
when installed (`.venv/bin/pip install starlette uvicorn httptools uvloop`; none is a
project dependency), the low-level server on uvloop and Starlette on uvicorn (which uses
httptools and uvloop when they are installed, else h11 and asyncio). Needs wrk
(`apt-get update && apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import statistics
import subprocess
import sys
import time

from dispatchq.devstack.ports import free_port, wait_for_port
from dispatchq.nomadsim.jsonshape import dumps

BODY = dumps("127.0.0.1:4647")


def serve(kind: str, port: int) -> None:
    """Run one trivial server in this process (the child side)."""
    if kind == "starlette":
        # Optional, uninstalled packages: imported by name so type checking does not
        # need them.
        uvicorn = importlib.import_module("uvicorn")
        starlette_app = importlib.import_module("starlette.applications")
        responses = importlib.import_module("starlette.responses")
        routing = importlib.import_module("starlette.routing")

        async def leader(request: object) -> object:
            return responses.Response(BODY, media_type="application/json")

        app = starlette_app.Starlette(routes=[routing.Route("/v1/status/leader", leader)])
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        return
    from aiohttp import web

    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    async def main() -> None:
        if kind.startswith("aiohttp-lowlevel"):
            runner: web.BaseRunner = web.ServerRunner(web.Server(handler, access_log=None))
        else:
            app = web.Application()
            app.router.add_get("/v1/status/leader", handler)
            runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    if kind.endswith("+uvloop"):
        importlib.import_module("uvloop").run(main())
    else:
        asyncio.run(main())


def measure(kind: str, duration: int, runs: int) -> list[float]:
    port = free_port()
    child = subprocess.Popen([sys.executable, "-m", "bench.nomadsim_frameworks", "--serve", kind,
                              "--port", str(port)])
    try:
        wait_for_port(port, 15)
        time.sleep(0.3)
        rates = []
        for _ in range(runs):
            out = subprocess.run(
                ["wrk", "-t1", "-c32", f"-d{duration}s",
                 f"http://127.0.0.1:{port}/v1/status/leader"],
                capture_output=True, text=True, check=True,
            ).stdout
            line = next(ln for ln in out.splitlines() if ln.startswith("Requests/sec"))
            rates.append(float(line.split()[1]))
        return rates
    finally:
        child.terminate()
        child.wait(10)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: run `apt-get update && apt-get install -y wrk` (as root)")
        return 1
    kinds = ["aiohttp-lowlevel", "aiohttp-router"]
    if importlib.util.find_spec("uvloop"):
        kinds.append("aiohttp-lowlevel+uvloop")
    if importlib.util.find_spec("starlette") and importlib.util.find_spec("uvicorn"):
        kinds.append("starlette")
    else:
        print("starlette/uvicorn not installed: skipped")
    # Interleave the runs so machine noise hits every stack alike.
    results: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.runs):
        for kind in kinds:
            results[kind] += measure(kind, args.duration, 1)
    for kind in kinds:
        rates = results[kind]
        print(f"{kind:24} median {statistics.median(rates):8.0f} req/s   runs "
              + " ".join(f"{r:.0f}" for r in rates))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
