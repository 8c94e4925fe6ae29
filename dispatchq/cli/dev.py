"""`dispatchq dev`: the local stack of `dispatchq demo`, kept running for other shells."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from dispatchq.devstack.stack import LocalStack

WATCH_INTERVAL = 0.5
"""Seconds between checks that every process of the stack is still running."""


@click.command(
    "dev", short_help="run a local stack (redis-server, nomadsim, workers) until Ctrl-C"
)
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--concurrency", "-c", type=int, default=500, show_default=True,
              help="Requests in flight per worker.")
@click.option("--metrics-port", type=int, default=0, metavar="PORT",
              help="Serve worker i's Prometheus metrics on 127.0.0.1:PORT+i (0: off).")
def command(**options: Any) -> int:
    """Start a private redis-server, nomadsim with the `video-encode` parameterized job and
    worker processes on loopback ports, print `export` lines that point other shells at
    them, and keep running until Ctrl-C or SIGTERM, which stop every process. Exits 0 when
    stopped that way, 1 if a process of the stack ends by itself."""
    return run(argparse.Namespace(**options))


def run(args: argparse.Namespace) -> int:
    from dispatchq.devstack.stack import local_stack  # noqa: PLC0415  (the stack loads only here)

    print(
        "dispatchq dev: starting redis-server, nomadsim, workers, a tracker and a notifier...",
        file=sys.stderr,
    )
    try:
        with local_stack(args.workers, args.concurrency, args.metrics_port) as stack:
            _announce(stack, args.metrics_port)
            try:
                return _watch(stack)
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (devstack.stack)
                print("dispatchq dev: stopping...", file=sys.stderr)
    except KeyboardInterrupt:
        pass  # while starting: local_stack stopped what it had started
    print("dispatchq dev: stopped", file=sys.stderr)
    return 0


def _announce(stack: LocalStack, metrics_port: int) -> None:
    """The export lines on stdout (`dispatchq dev > dev.env` and `. dev.env` work), the
    rest on stderr."""
    for name, value in stack.env.items():
        print(f"export {name}={shlex.quote(value)}")
    sys.stdout.flush()
    notes = [
        f"dispatchq dev: running {len(stack.workers)} worker(s) on queue "
        f"{stack.env['DISPATCHQ_QUEUE']}; paste the export lines into another shell, then",
        '  echo \'{"source": "a.mov"}\' | dispatchq job dispatch -meta profile=720p video-encode -',
        f"Worker logs: {stack.log_dir}",
    ]
    if metrics_port:
        urls = [f"http://127.0.0.1:{metrics_port + i}/metrics" for i in range(len(stack.workers))]
        notes.append(f"Metrics: {' '.join(urls)}")
    if stack.web is not None:
        notes.append(f"Dashboard: {stack.web.url}")
    notes.append("Ctrl-C or SIGTERM stops everything.")
    print("\n".join(notes), file=sys.stderr, flush=True)


def _watch(stack: LocalStack) -> int:
    """Wait until a process of the stack ends by itself (1), or an interrupt is raised."""
    children: dict[str, subprocess.Popen[bytes] | None] = {
        "redis-server": stack.redis.process,
        "nomadsim": stack.sim.process,
        **{f"worker {w.name}": w.process for w in stack.workers},
        "tracker": stack.tracker.process if stack.tracker else None,
    }
    while True:
        for name, process in children.items():
            if process is not None and process.poll() is not None:
                print(
                    f"dispatchq dev: {name} exited with code {process.returncode}; stopping",
                    file=sys.stderr,
                )
                _print_worker_logs(stack)
                return 1
        time.sleep(WATCH_INTERVAL)


def _print_worker_logs(stack: LocalStack, lines: int = 20) -> None:
    """The last lines of each worker's log, which goes with the stack's temporary
    directory."""
    for worker in stack.workers:
        if worker.log_path is not None and worker.log_path.exists():
            tail = worker.log_path.read_text(errors="replace").splitlines()[-lines:]
            print(f"--- {worker.log_path.name}", *tail, sep="\n", file=sys.stderr)
