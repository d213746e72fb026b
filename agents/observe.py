"""Reading a simulated cluster as a policy sees a real one, and running a policy on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlscale.agents.base import BudgetState, ClusterState, Policy, PoolState, decision_to_action
from rlscale.envs.names import (
    BATCH_ATTAINMENT,
    BATCH_COUNTS,
    BUDGET_BREACHES,
    BUDGET_LIMIT_USD,
    BUDGET_PEAK_SPEND_USD,
    CAP_BOUND_MET,
    CAP_BOUND_REQUESTS,
    CAP_BOUND_STEPS,
    COST_BY_CLASS_USD,
)
from rlscale.envs.simulator import ClusterSimulator


def observe(sim: ClusterSimulator, i: int = 0) -> ClusterState:
    """Cluster ``i``'s state after its last step, in the units a live cluster reports."""
    sc = sim.scenario
    v = sim.cluster(i)
    caps = sim.pool_capacity_rps
    spot_share = v.spot_capacity_share()
    pools = tuple(
        PoolState(
            name=p.name,
            purchase=p.purchase,
            quota=p.quota,
            warm_pool_max=p.warm_pool_max,
            on_demand_price_usd_h=p.price_usd_h,
            price_usd_h=float(v.price_usd_h[j]),
            capacity_rps=float(caps[j]),
            provisioning=float(v.provisioning[j]),
            loading=float(v.loading[j]),
            ready=float(v.ready[j]),
            draining=float(v.draining[j]),
            standby=float(v.standby[j]),
            refilling=float(v.refilling[j]),
            preempt_notices=float(v.preempt_notices[j]),
            spot_capacity_share=float(spot_share[j]),
            batch_per_replica=float(v.batch_per_replica[j]),
            max_num_seqs=p.profile.max_num_seqs,
            serves=sc.pools[j].serves,
        )
        for j, p in enumerate(sim.pools)
    )
    return ClusterState(
        time_s=v.time_s,
        time_of_week_s=v.time_of_week_s,
        interval_s=sc.control_interval_s,
        arrival_rate_rps=v.arrival_rate_rps,
        arrival_rate_ewma_rps=v.arrival_rate_ewma_rps,
        forecast_rps=v.forecast_rps,
        queue=v.queue,
        in_flight=v.in_flight,
        gpu_util=v.compute_util,
        kv_util=v.kv_util,
        ttft_p50_s=v.ttft_p50_s,
        ttft_p95_s=v.ttft_p95_s,
        tpot_p95_s=v.tpot_p95_s,
        slo_attainment=v.slo_attainment,
        dropped=v.dropped,
        ttft_target_s=sc.slo.ttft_s,
        tpot_target_s=sc.slo.tpot_s,
        pools=pools,
        budget=_observed_budget(sim, i),
        **_batch_state(sim, v),
    )


def _batch_state(sim: ClusterSimulator, v: Any) -> dict[str, float]:
    """The batch fields of :class:`ClusterState`; none (their defaults) without batch work."""
    batch = sim.scenario.workload.batch
    if not sim.has_batch or batch is None:
        return {}
    return {
        "batch_queue": v.batch_queue,
        "batch_arrival_rate_rps": v.batch_arrival_rate_rps,
        "batch_deadline_s": batch.deadline_h * 3600.0,
    }


def batch_summary(sim: ClusterSimulator, i: int = 0) -> dict[str, Any]:
    """Per-class accounting of cluster ``i``'s episode for its summary; empty without batch
    work. ``batch_attainment`` is the share of the batch requests whose fate is known that
    completed within the deadline: completed / (completed + expired); those still queued or in
    flight at the end are reported apart."""
    if not sim.has_batch:
        return {}
    b = sim.batch_counters(i)
    decided = b["completed"] + b["expired"]
    return {
        BATCH_COUNTS: b,
        BATCH_ATTAINMENT: b["completed"] / decided if decided > 0 else 1.0,
        COST_BY_CLASS_USD: sim.class_costs(i),
    }


def _observed_budget(sim: ClusterSimulator, i: int) -> BudgetState | None:
    """Cluster ``i``'s observed budget, as the service's spend meter reports one."""
    ledger = sim.budget_ledger
    state = ledger.state(i) if ledger is not None else None
    return BudgetState(**state) if state is not None else None


@dataclass
class EpisodeResult:
    """What one policy did over one episode of one cluster.

    A recorded episode's ``timeline`` holds per step: ``arrival_rps``, ``capacity_rps``,
    ``cost_usd``, ``attainment``, ``ready/{pool}`` and ``cost_usd/{pool}``, and the tenants'
    allocations ``tenant_cost_usd`` and ``tenant_idle_usd`` ([steps, tenants], tenants in the
    order of ``summary["cost_by_tenant_usd"]``); with budgets, ``budget_spend_usd/{budget}``
    (the period's spend) and ``cap_bound`` (1 where a cap cut the policy's action).
    """

    policy: str
    seed: int
    start_step: int
    summary: dict[str, Any]
    timeline: dict[str, np.ndarray] = field(default_factory=dict)
    cpu_s: float | None = None
    """CPU seconds the worker spent on this episode, its policy's planning included (set by
    the evaluation grid's runner; None where nobody timed it)."""


class _BudgetRecord:
    """An episode's budgets (:mod:`rlscale.envs.budgets`): each budget's highest period spend
    and breaches, and where a cap bound: its steps, and the requests in them that met the SLO
    or not. Recorded, per step: each budget's period spend (``budget_spend_usd/NAME``) and
    whether a cap bound (``cap_bound``)."""

    def __init__(self, sim: ClusterSimulator, record: bool) -> None:
        self.sim = sim
        self.record = record
        self.names = [b.name for b in sim.scenario.budgets]
        self.capped = any(b.mode == "cap" for b in sim.scenario.budgets)
        self.bound_steps = self.bound_met = self.bound_requests = 0.0
        self.timeline: dict[str, list[float]] = {}
        if record:
            self.timeline = {f"budget_spend_usd/{n}": [] for n in self.names}
            self.timeline["cap_bound"] = []

    def step(self) -> None:
        info = self.sim.budget_ledger.info(0)
        bound = info.get("budget/cap_bound", 0.0)
        if bound:
            met, counted = self.sim.step_requests()
            self.bound_steps += 1.0
            self.bound_met += float(met[0])
            self.bound_requests += float(counted[0])
        if self.record:
            for n in self.names:
                self.timeline[f"budget_spend_usd/{n}"].append(info[f"budget/{n}/spend_usd"])
            self.timeline["cap_bound"].append(bound)

    def summary(self) -> dict[str, Any]:
        info = self.sim.budget_ledger.info(0)
        out: dict[str, Any] = {
            BUDGET_LIMIT_USD: {n: info[f"budget/{n}/limit_usd"] for n in self.names},
            BUDGET_PEAK_SPEND_USD: {n: info[f"budget/{n}/peak_spend_usd"] for n in self.names},
            BUDGET_BREACHES: {n: info[f"budget/{n}/breaches"] for n in self.names},
        }
        if self.capped:
            out[CAP_BOUND_STEPS] = self.bound_steps
            out[CAP_BOUND_REQUESTS] = self.bound_requests
            out[CAP_BOUND_MET] = self.bound_met
        return out


def run_episode(
    policy: Policy,
    sim: ClusterSimulator,
    *,
    seed: int,
    start_step: int | None = None,
    record: bool = False,
) -> EpisodeResult:
    """Run ``policy`` on cluster 0 of ``sim`` for one episode and summarize it."""
    sim.reset_cluster(0, np.random.default_rng(seed), start_step=start_step)
    memory = policy.initial_memory()
    names = sim.pool_names
    steps = sim.episode_steps
    rec: dict[str, list] = {
        k: [] for k in ("arrival_rps", "capacity_rps", "cost_usd", "attainment")
    }
    if record:
        for name in names:
            rec[f"ready/{name}"] = []
            rec[f"cost_usd/{name}"] = []
        rec["tenant_cost_usd"] = []
        rec["tenant_idle_usd"] = []
        tenant_cost_before = np.zeros(len(sim.workload.tenant_names))
        tenant_idle_before = tenant_cost_before.copy()
    caps = sim.pool_capacity_rps
    gpus = np.array([p.profile.gpus_per_replica for p in sim.pools])
    gpu_s = np.zeros(len(names))
    cost_pool = np.zeros(len(names))
    totals = {"scale_events": 0.0, "cold_starts": 0.0, "preemptions": 0.0, "tokens": 0.0}
    view = sim.cluster(0)
    budgets = _BudgetRecord(sim, record) if sim.budget_ledger is not None else None
    for _ in range(steps):
        state = observe(sim, 0)
        decision, memory = policy.decide(state, memory)
        action = decision_to_action(decision, state, names, sim.scenario.max_step)
        sim.step(action[None, :])
        if budgets is not None:
            budgets.step()
        gpu_s += view.replica_s_by_pool * gpus
        cost_pool += view.cost_by_pool_usd
        totals["scale_events"] += view.scale_events
        totals["cold_starts"] += view.cold_starts + view.warm_starts
        totals["preemptions"] += view.preemptions
        totals["tokens"] += view.tokens_served
        if record:
            rec["arrival_rps"].append(view.arrival_rate_rps)
            rec["capacity_rps"].append(float(view.ready @ caps))
            rec["cost_usd"].append(view.cost_usd)
            rec["attainment"].append(view.slo_attainment)
            for j, name in enumerate(names):
                rec[f"ready/{name}"].append(float(view.ready[j]))
                rec[f"cost_usd/{name}"].append(float(view.cost_by_pool_usd[j]))
            tenant_cost = np.fromiter(sim.tenant_costs(0).values(), dtype=np.float64)
            tenant_idle = np.fromiter(sim.tenant_idle_costs(0).values(), dtype=np.float64)
            rec["tenant_cost_usd"].append(tenant_cost - tenant_cost_before)
            rec["tenant_idle_usd"].append(tenant_idle - tenant_idle_before)
            tenant_cost_before, tenant_idle_before = tenant_cost, tenant_idle
    c = sim.counters(0)
    lat = sim.episode_latency(0)
    cost = view.episode_cost_usd
    summary = {
        "cost_usd": cost,
        "cost_per_million_tokens_usd": cost / max(totals["tokens"], 1.0) * 1e6,
        "slo_attainment": view.episode_slo_attainment,
        **lat,
        "dropped": c["dropped"],
        "completed": c["completed"],
        "scale_events": totals["scale_events"],
        "cold_starts": totals["cold_starts"],
        "preemptions": totals["preemptions"],
        "gpu_hours": {n: float(g / 3600.0) for n, g in zip(names, gpu_s, strict=True)},
        "cost_by_pool_usd": {n: float(v) for n, v in zip(names, cost_pool, strict=True)},
        "cost_by_tenant_usd": sim.tenant_costs(0),
        "idle_cost_by_tenant_usd": sim.tenant_idle_costs(0),
        "busy_gpu_hours_by_tenant": sim.tenant_busy_gpu_hours(0),
        **batch_summary(sim, 0),
    }
    if budgets is not None:
        summary.update(budgets.summary())
        rec.update(budgets.timeline)
    timeline = {k: np.asarray(v) for k, v in rec.items()} if record else {}
    return EpisodeResult(policy.name, seed, int(sim.start_steps[0]), summary, timeline)
