"""Simulated nodes, constraint feasibility and bin-packing, with Nomad's AllocMetric.

Each node has CPU (MHz) and memory (MB) and the attributes of a Linux client; a
placement filters nodes by the job's datacenters and constraints (counted in
ConstraintFiltered), then picks the fitting node that ends up the most used (Nomad's
default binpack), counting the nodes that do not fit by exhausted dimension.
"""

from __future__ import annotations

import fnmatch
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from dispatchq.nomadsim.model import JsonObj, Node


def make_nodes(count: int, cpu: int, memory_mb: int, datacenter: str) -> list[Node]:
    nodes = []
    for index in range(count):
        node_id = str(uuid.UUID(int=index + 1, version=4))
        name = f"nomadsim-{index + 1}"
        attributes = {
            "kernel.name": "linux",
            "os.name": "debian",
            "cpu.arch": "amd64",
            "arch": "amd64",
            "cpu.totalcompute": str(cpu),
            "memory.totalbytes": str(memory_mb * 1024 * 1024),
            "unique.hostname": name,
            "driver.mock_driver": "1",
            "driver.raw_exec": "1",
            "driver.exec": "1",
            "driver.docker": "1",
            "nomad.version": "1.10.5",
        }
        nodes.append(Node(node_id, name, datacenter, cpu, memory_mb, attributes))
    return nodes


def _resolve(target: str, node: Node) -> str | None:
    match = re.fullmatch(r"\$\{(.+)\}", target.strip())
    if match is None:
        return target
    name = match.group(1)
    if name.startswith("attr."):
        return node.attributes.get(name[5:])
    known = {
        "node.datacenter": node.datacenter,
        "node.unique.id": node.id,
        "node.unique.name": node.name,
        "node.class": "",
        "node.pool": "default",
    }
    return known.get(name)


def _version_like(value: str) -> tuple[int, ...] | None:
    parts = re.findall(r"\d+", value)
    return tuple(int(p) for p in parts) if parts else None


def constraint_ok(constraint: JsonObj, node: Node) -> bool:
    operand = constraint.get("Operand") or "="
    left = _resolve(constraint.get("LTarget") or "", node)
    right = _resolve(constraint.get("RTarget") or "", node)
    if operand in ("distinct_hosts", "distinct_property", "version", "semver"):
        return True
    if operand == "is_set":
        return left is not None
    if operand == "is_not_set":
        return left is None
    if left is None or right is None:
        return operand in ("!=", "not")
    if operand in ("=", "==", "is"):
        return left == right
    if operand in ("!=", "not"):
        return left != right
    if operand == "regexp":
        try:
            return re.search(right, left) is not None
        except re.error:
            return False
    lset = {s.strip() for s in left.split(",")}
    rset = {s.strip() for s in right.split(",")}
    if operand in ("set_contains", "set_contains_all"):
        return rset <= lset
    if operand == "set_contains_any":
        return bool(rset & lset)
    if operand in ("<", "<=", ">", ">="):
        lv, rv = _version_like(left), _version_like(right)
        if lv is None or rv is None:
            return False
        return {"<": lv < rv, "<=": lv <= rv, ">": lv > rv, ">=": lv >= rv}[operand]
    return False


def constraint_string(constraint: JsonObj) -> str:
    operand = constraint.get("Operand") or "="
    return f"{constraint.get('LTarget') or ''} {operand} {constraint.get('RTarget') or ''}"


def group_constraints(job: JsonObj, group: JsonObj) -> list[JsonObj]:
    out = list(job.get("Constraints") or ())
    out += group.get("Constraints") or ()
    for task in group.get("Tasks") or ():
        out += task.get("Constraints") or ()
    return out


def group_need(group: JsonObj) -> tuple[int, int]:
    tasks = group.get("Tasks") or ()
    return (
        sum(t["Resources"]["CPU"] for t in tasks),
        sum(t["Resources"]["MemoryMB"] for t in tasks),
    )


def new_metric(nodes_in_pool: int, available: dict[str, int]) -> JsonObj:
    return {
        "NodesInPool": nodes_in_pool,
        "NodesEvaluated": 0,
        "NodesFiltered": 0,
        "NodesAvailable": available,
        "ClassFiltered": None,
        "ConstraintFiltered": None,
        "NodesExhausted": 0,
        "ClassExhausted": None,
        "DimensionExhausted": None,
        "QuotaExhausted": None,
        "ResourcesExhausted": None,
        "Scores": None,
        "ScoreMetaData": None,
        "AllocationTime": 0,
        "CoalescedFailures": 0,
    }


@dataclass(frozen=True)
class GroupInfo:
    """What placing one alloc of a task group needs, computed once per group."""

    group: JsonObj
    job_constraints: object
    constraints: list[JsonObj]
    cpu: int
    memory_mb: int
    tasks: dict[str, tuple[int, int]]


class Placer:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self._by_dcs: dict[tuple[str, ...], tuple[list[Node], dict[str, int]]] = {}
        self._groups: dict[int, GroupInfo] = {}

    def info(self, job: JsonObj, group: JsonObj) -> GroupInfo:
        """Group facts, cached by the group object (children share their parent's)."""
        cached = self._groups.get(id(group))
        job_constraints = job.get("Constraints")
        if (cached is not None and cached.group is group
                and cached.job_constraints is job_constraints):
            return cached
        if len(self._groups) > 10_000:
            self._groups.clear()
        cpu, memory = group_need(group)
        info = GroupInfo(
            group=group,
            job_constraints=job_constraints,
            constraints=group_constraints(job, group),
            cpu=cpu,
            memory_mb=memory,
            tasks={t["Name"]: (t["Resources"]["CPU"], t["Resources"]["MemoryMB"])
                   for t in group["Tasks"]},
        )
        self._groups[id(group)] = info
        return info

    def candidates(self, job: JsonObj) -> tuple[list[Node], dict[str, int]]:
        """Nodes in the job's datacenters, and NodesAvailable (ready nodes per DC)."""
        patterns = tuple(job.get("Datacenters") or ["*"])
        cached = self._by_dcs.get(patterns)
        if cached is None:
            available = {p: 0 for p in patterns if not any(c in p for c in "*?[")}
            chosen = []
            for node in self.nodes:
                if any(fnmatch.fnmatchcase(node.datacenter, p) for p in patterns):
                    chosen.append(node)
                    available[node.datacenter] = available.get(node.datacenter, 0) + 1
            cached = self._by_dcs[patterns] = (chosen, available)
        return cached[0], dict(cached[1])

    def feasible(self, node: Node, constraints: Iterable[JsonObj]) -> JsonObj | None:
        """The first constraint the node fails, or None."""
        for constraint in constraints:
            if not constraint_ok(constraint, node):
                return constraint
        return None

    def select(self, job: JsonObj, group: JsonObj) -> tuple[Node | None, JsonObj]:
        started = time.perf_counter_ns()
        nodes, available = self.candidates(job)
        metric = new_metric(len(self.nodes), available)
        info = self.info(job, group)
        constraints, cpu, memory = info.constraints, info.cpu, info.memory_mb
        best: Node | None = None
        best_score = -1.0
        for node in nodes:
            if node.status != "ready" or not node.eligible:
                continue
            metric["NodesEvaluated"] += 1
            failed = self.feasible(node, constraints) if constraints else None
            if failed is not None:
                metric["NodesFiltered"] += 1
                filtered = metric["ConstraintFiltered"] or {}
                name = constraint_string(failed)
                filtered[name] = filtered.get(name, 0) + 1
                metric["ConstraintFiltered"] = filtered
                continue
            dimension = None
            if node.used_cpu + cpu > node.cpu:
                dimension = "cpu"
            elif node.used_memory_mb + memory > node.memory_mb:
                dimension = "memory"
            if dimension is not None:
                metric["NodesExhausted"] += 1
                exhausted = metric["DimensionExhausted"] or {}
                exhausted[dimension] = exhausted.get(dimension, 0) + 1
                metric["DimensionExhausted"] = exhausted
                continue
            score = (node.used_cpu + cpu) / node.cpu
            score += (node.used_memory_mb + memory) / node.memory_mb
            if score > best_score:
                best, best_score = node, score
        metric["AllocationTime"] = time.perf_counter_ns() - started
        return best, metric

    def could_fit(self, job: JsonObj, group: JsonObj, free: dict[str, list[int]]) -> bool:
        """Whether some node, with `free` capacity left, could take one alloc of group."""
        nodes, _ = self.candidates(job)
        info = self.info(job, group)
        constraints, cpu, memory = info.constraints, info.cpu, info.memory_mb
        for node in nodes:
            if node.status != "ready":
                continue
            room = free[node.id]
            if room[0] >= cpu and room[1] >= memory and self.feasible(node, constraints) is None:
                room[0] -= cpu
                room[1] -= memory
                return True
        return False
