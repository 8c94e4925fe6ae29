"""Server settings: one dataclass filled from the command line (see __main__)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 4646
    region: str = "global"
    datacenter: str = "dc1"
    nodes: int = 3
    node_cpu: int = 16000
    node_memory: int = 32768
    #: Seconds an allocation stays `pending` before `running`.
    start_time: float = 0.01
    #: Seconds a batch task runs before it exits 0 when its driver is not mock_driver
    #: or it has no `run_for` (not scaled by time_scale).
    run_time: float = 0.05
    #: Seconds the scheduler spends on each evaluation before placing it.
    schedule_delay: float = 0.0
    acl: bool = False
    #: Seconds between `{}` heartbeats on the event stream.
    heartbeat: float = 30.0
    #: Event batches kept for replay with `?index=`.
    event_buffer: int = 4096
    #: Dead jobs (and their evals and allocs) are removed this many seconds after they
    #: became dead; 0 disables collection. The dispatch record is never collected.
    gc_after: float = 300.0
    gc_interval: float = 10.0
    latency_ms: float = 0.0
    #: The next N scheduled evaluations end `failed` with a NextEval follow-up.
    fail_evals: int = 0
    followup_wait: float = 0.2
    faults: list[dict[str, object]] = field(default_factory=list)
    #: Every duration a job spec gives (run_for, start_block_for, kill_after, restart
    #: and reschedule delays and intervals, max_run_duration) is waited for this many
    #: times as long: 0.001 runs a 15 s restart delay in 15 ms.
    time_scale: float = 1.0
