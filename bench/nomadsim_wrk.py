"""Dispatch throughput of nomadsim under wrk, against a trivial endpoint in the same run.

    .venv/bin/python -m bench.nomadsim_wrk [--connections 32] [--duration 5] [--runs 3]

Starts `python -m nomadsim` on a free port, registers a parameterized job, then for each
run measures `GET /v1/status/leader` (the baseline) and `POST /v1/job/<id>/dispatch`
with a valid body (a wrk Lua script), and prints the medians and their ratio. Needs wrk
(`apt-get update && apt-get install -y wrk`). Extra nomadsim flags go after `--`, e.g.
`-- --latency-ms 20`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

from devstack.nomadsim_process import NomadSimProcess

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


def wrk(url: str, connections: int, duration: int, threads: int,
        script: Path | None = None) -> tuple[float, int]:
    """(requests/s, non-2xx responses) of one wrk run."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return float(rate.group(1)), int(errors.group(1)) if errors else 0


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
        baseline: list[float] = []
        dispatch: list[float] = []
        failures = 0
        for run in range(1, args.runs + 1):
            base, base_errors = wrk(f"{sim.address}/v1/status/leader", args.connections,
                                    args.duration, args.threads)
            rate, errors = wrk(f"{sim.address}/v1/job/{JOB_ID}/dispatch", args.connections,
                               args.duration, args.threads, script)
            failures += base_errors + errors
            baseline.append(base)
            dispatch.append(rate)
            print(f"run {run}: baseline {base:8.0f} req/s   dispatch {rate:8.0f} req/s")
        stats = requests.get(f"{sim.address}/_sim/stats", timeout=10).json()
    base_median = statistics.median(baseline)
    dispatch_median = statistics.median(dispatch)
    print(f"\nwrk -c{args.connections} -t{args.threads} -d{args.duration}s, "
          f"medians of {args.runs} runs (nomadsim flags: {args.sim_args or 'defaults'})")
    print(f"  baseline GET /v1/status/leader : {base_median:8.0f} req/s")
    print(f"  POST /v1/job/:id/dispatch      : {dispatch_median:8.0f} req/s")
    print(f"  ratio dispatch / baseline      : {dispatch_median / base_median:8.2f}")
    print(f"  dispatches accepted            : {stats['dispatches']}")
    print(f"  non-2xx responses              : {failures}")
    verdict = "meets" if dispatch_median >= TARGET else "is below"
    print(f"  {dispatch_median:.0f} dispatches/s {verdict} the {TARGET:.0f}/s target")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
