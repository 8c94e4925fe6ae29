"""Memory and TCP connections of a process tree, read from /proc (Linux; no psutil).

    tree(pid)                  the pid and all its descendants
    memory(pids)               summed RSS and PSS in bytes (PSS shares forked pages fairly),
                               processes and threads
    cpu_seconds(pids)          user + system CPU seconds used so far
    tcp_connections(pids, p)   the tree's sockets connected to 127.0.0.1:p, by TCP state
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")

TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
    "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


def _parent(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1])


def tree(root: int) -> list[int]:
    """`root` and every process descending from it (now; processes come and go)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            parent = _parent(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


@dataclass(frozen=True)
class Memory:
    rss: int
    pss: int
    processes: int
    threads: int


def memory(pids: list[int]) -> Memory:
    """Summed RSS and PSS (bytes) of `pids`, from /proc/<pid>/smaps_rollup, and how many
    processes and threads there are."""
    rss = pss = count = threads = 0
    for pid in pids:
        try:
            text = (PROC / str(pid) / "smaps_rollup").read_text()
            status = (PROC / str(pid) / "status").read_text()
        except OSError:
            continue
        count += 1
        threads += next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:")
        )
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            if name == "Rss":
                rss += int(rest.split()[0]) * 1024
            elif name == "Pss":
                pss += int(rest.split()[0]) * 1024
    return Memory(rss, pss, count, threads)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds `pids` have used so far (/proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = (PROC / str(pid) / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def tcp_connections(pids: list[int], remote_port: int) -> Counter[str]:
    """The sockets held open by `pids` whose remote end is port `remote_port` (IPv4 or
    IPv6), counted by TCP state. Sockets no process holds (TIME_WAIT) are not counted."""
    inodes: set[str] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    states: Counter[str] = Counter()
    seen: set[str] = set()
    for pid in pids[:1]:  # one network namespace: any process's view lists every socket
        for table in ("tcp", "tcp6"):
            try:
                lines = (PROC / str(pid) / "net" / table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                remote, state, inode = fields[2], fields[3], fields[9]
                if inode in inodes and inode not in seen and int(remote.split(":")[1], 16) == (
                    remote_port
                ):
                    seen.add(inode)
                    states[TCP_STATES.get(state, state)] += 1
    return states
