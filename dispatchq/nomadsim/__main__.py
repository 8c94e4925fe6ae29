"""`python -m nomadsim [flags]`: run the development server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import sys

import uvloop

from dispatchq.nomadsim.config import SimConfig
from dispatchq.nomadsim.faults import FaultRule
from dispatchq.nomadsim.jsonshape import parse_go_duration


def _seconds(text: str) -> float:
    """A Go duration (`50ms`, `2s`) or a plain number of seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_go_duration(text) / 1e9
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fault(text: str) -> dict[str, object]:
    try:
        return FaultRule.from_flag(text).to_json()
    except (ValueError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="nomadsim",
        description="A Nomad-HTTP-API-compatible development server (like `nomad agent -dev`).",
    )
    p.add_argument("--host", default=d.host, help="listen address (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="listen port (default %(default)s)")
    p.add_argument("--region", default=d.region, help="agent region (default %(default)s)")
    p.add_argument("--datacenter", default=d.datacenter, help="node datacenter (default dc1)")
    p.add_argument("--nodes", type=int, default=d.nodes, help="simulated client nodes")
    p.add_argument("--node-cpu", type=int, default=d.node_cpu, help="CPU MHz per node")
    p.add_argument("--node-memory", type=int, default=d.node_memory, help="memory MB per node")
    p.add_argument("--start-time", type=_seconds, default=d.start_time,
                   help="time an alloc stays pending (Go duration or seconds; default 10ms)")
    p.add_argument("--run-time", type=_seconds, default=d.run_time,
                   help="time a batch alloc runs before completing (default 50ms)")
    p.add_argument("--schedule-delay", type=_seconds, default=d.schedule_delay,
                   help="time the scheduler spends on each evaluation (default 0)")
    p.add_argument("--fail-evals", type=int, default=d.fail_evals,
                   help="the next N evaluations end failed with a NextEval follow-up")
    p.add_argument("--followup-wait", type=_seconds, default=d.followup_wait,
                   help="Wait of those follow-up evaluations (default 200ms)")
    p.add_argument("--time-scale", type=float, default=d.time_scale,
                   help="multiply every duration from a job spec (run_for, restart and "
                        "reschedule delays, max_run_duration...) by this (default 1)")
    p.add_argument("--acl", action="store_true", help="enable ACLs (bootstrap with the API)")
    p.add_argument("--heartbeat", type=_seconds, default=d.heartbeat,
                   help="event stream heartbeat interval (default 30s)")
    p.add_argument("--event-buffer", type=int, default=d.event_buffer,
                   help="event batches kept for replay (default %(default)s)")
    p.add_argument("--gc-after", type=_seconds, default=d.gc_after,
                   help="collect jobs dead for this long, with their evals and allocs "
                        "(default 300s; 0 = never)")
    p.add_argument("--gc-interval", type=_seconds, default=d.gc_interval,
                   help="how often to look for such jobs (default 10s)")
    p.add_argument("--latency-ms", type=float, default=d.latency_ms,
                   help="answer every Nomad request after this many ms")
    p.add_argument("--fault", type=_fault, action="append", default=[], metavar="RULE",
                   help="fault rule: kind[:route[:probability[:count[:delay_ms]]]] or JSON; "
                        "kinds error, rate_limit, slow, cut (repeatable)")
    return p


def config_from_args(argv: list[str]) -> SimConfig:
    args = build_parser().parse_args(argv)
    return SimConfig(
        host=args.host,
        port=args.port,
        region=args.region,
        datacenter=args.datacenter,
        nodes=args.nodes,
        node_cpu=args.node_cpu,
        node_memory=args.node_memory,
        start_time=args.start_time,
        run_time=args.run_time,
        schedule_delay=args.schedule_delay,
        acl=args.acl,
        heartbeat=args.heartbeat,
        event_buffer=args.event_buffer,
        gc_after=args.gc_after,
        gc_interval=args.gc_interval,
        latency_ms=args.latency_ms,
        fail_evals=args.fail_evals,
        followup_wait=args.followup_wait,
        faults=args.fault,
        time_scale=args.time_scale,
    )


async def serve(config: SimConfig) -> None:
    from dispatchq.nomadsim.app import NomadSimServer  # noqa: PLC0415  (keeps --help fast)
    from dispatchq.nomadsim.sim import Sim  # noqa: PLC0415

    server = NomadSimServer(Sim(config))
    await server.start(config.host, config.port)
    print(f"nomadsim listening on http://{config.host}:{config.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str]) -> int:
    config = config_from_args(argv)
    # The store holds many small dicts and objects without reference cycles; with the
    # default thresholds the cyclic GC would rescan all of them ever more often as the
    # state grows. Collect young objects rarely and old ones almost never.
    gc.set_threshold(50_000, 50, 1000)
    try:
        # uvloop: the loop and its socket transports in C, a large share of the
        # per-request CPU time under load.
        uvloop.run(serve(config))
    except OSError as exc:
        print(f"nomadsim: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
