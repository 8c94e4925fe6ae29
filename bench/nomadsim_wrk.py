"""Dispatch throughput of nomadsim under wrk, against a trivial endpoint in the same run.

    .venv/bin/python -m bench.nomadsim_wrk [--connections 32] [--duration 5] [--runs 3]

Starts `python -m nomadsim` on a free port, registers a parameterized job, then for each
run measures `GET /v1/status/leader` (the baseline) and `POST /v1/job/<id>/dispatch`
with a valid body (a wrk Lua script), and prints the medians, their ratio and the
server's CPU time per request (steadier than req/s on a shared machine). Needs wrk
(`apt-get update && apt-get install -y wrk`). Extra nomadsim flags go after `--`, e.g.
`-- --latency-ms 20`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from dispatchq.devstack.nomadsim_process import NomadSimProcess

TARGET = 3000.0
JOB_ID = "bench-dispatch"
BODY = {"JobID": JOB_ID, "Payload": "aGVsbG8=", "Meta": {"k": "v"}, "IdPrefixTemplate": "",
        "Priority": 0}
JOB = {
    "ID": JOB_ID,
    "Type": "batch",
    "ParameterizedJob": {"Payload": "optional", "MetaOptional": ["k"]},
    "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [
        {"Name": "t", "Driver": "mock_driver", "Resources": {"CPU": 1, "MemoryMB": 1}}]}],
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    rate: float
    errors: int
    cpu_us: float  # server CPU per request (including work the request left behind)


def wrk(pid: int, url: str, args: argparse.Namespace, script: Path | None = None) -> Run:
    """One wrk run, with the server's CPU time per request."""
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s"]
    if script is not None:
        cmd += ["-s", str(script)]
    before = cpu_seconds(pid)
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    time.sleep(0.5)  # let the allocs the run started finish, so their work counts
    spent = cpu_seconds(pid) - before
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rate is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Run(float(rate.group(1)), int(errors.group(1)) if errors else 0,
               spent / int(total.group(1)) * 1e6)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("sim_args", nargs="*", help="extra nomadsim flags (after --)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: run `apt-get update && apt-get install -y wrk` (as root)")
        return 1
    lua = ("wrk.method = \"POST\"\n"
           f"wrk.body = '{json.dumps(BODY)}'\n"
           "wrk.headers[\"Content-Type\"] = \"application/json\"\n")
    with tempfile.TemporaryDirectory() as tmp, NomadSimProcess(args=args.sim_args) as sim:
        script = Path(tmp) / "dispatch.lua"
        script.write_text(lua)
        requests.put(f"{sim.address}/v1/jobs", json={"Job": JOB}, timeout=10).raise_for_status()
        assert sim.process is not None
        pid = sim.process.pid
        baseline: list[Run] = []
        dispatch: list[Run] = []
        for number in range(1, args.runs + 1):
            base = wrk(pid, f"{sim.address}/v1/status/leader", args)
            run = wrk(pid, f"{sim.address}/v1/job/{JOB_ID}/dispatch", args, script)
            baseline.append(base)
            dispatch.append(run)
            print(f"run {number}: baseline {base.rate:8.0f} req/s ({base.cpu_us:4.0f} us CPU/req)"
                  f"   dispatch {run.rate:8.0f} req/s ({run.cpu_us:4.0f} us CPU/req)")
        stats = requests.get(f"{sim.address}/_sim/stats", timeout=10).json()
    failures = sum(r.errors for r in baseline + dispatch)
    base_median = statistics.median(r.rate for r in baseline)
    dispatch_median = statistics.median(r.rate for r in dispatch)
    base_cpu = statistics.median(r.cpu_us for r in baseline)
    dispatch_cpu = statistics.median(r.cpu_us for r in dispatch)
    print(f"\nwrk -c{args.connections} -t{args.threads} -d{args.duration}s, "
          f"medians of {args.runs} runs (nomadsim flags: {args.sim_args or 'defaults'})")
    print(f"  baseline GET /v1/status/leader : {base_median:8.0f} req/s  "
          f"{base_cpu:5.0f} us CPU/req")
    print(f"  POST /v1/job/:id/dispatch      : {dispatch_median:8.0f} req/s  "
          f"{dispatch_cpu:5.0f} us CPU/req (incl. scheduling and the alloc lifecycle)")
    print(f"  ratio dispatch / baseline      : {dispatch_median / base_median:8.2f}")
    print(f"  dispatches per CPU-second      : {1e6 / dispatch_cpu:8.0f} "
          "(the ceiling with a whole core)")
    print(f"  dispatches accepted            : {stats['dispatches']}")
    print(f"  non-2xx responses              : {failures}")
    verdict = "meets" if dispatch_median >= TARGET else "is below"
    print(f"  {dispatch_median:.0f} dispatches/s {verdict} the {TARGET:.0f}/s target")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
