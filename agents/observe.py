"""Reading a simulated cluster as a policy sees a real one, and running a policy on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlscale.agents.base import ClusterState, Policy, PoolState, decision_to_action
from rlscale.envs import dynamics as dyn
from rlscale.envs.profiles import replica_capacity_rps
from rlscale.envs.simulator import ClusterSimulator


def pool_capacities_rps(sim: ClusterSimulator) -> np.ndarray:
    """Saturation throughput of one replica of each pool for the workload's request mix."""
    cached = getattr(sim, "_pool_capacity_rps", None)
    if cached is not None:
        return cached
    wl = sim.workload
    n = max(float(wl.arrivals.sum()), 1e-9)
    prompt = max(float(wl.prompt_tokens.sum()) / n, 1.0)
    output = max(float(wl.output_tokens.sum()) / n, 1.0)
    caps = np.array(
        [
            replica_capacity_rps(
                p.profile, prompt, output, max_batched_tokens=sim.scenario.max_batched_tokens
            )
            for p in sim.pools
        ]
    )
    sim._pool_capacity_rps = caps
    return caps


def observe(sim: ClusterSimulator, i: int = 0) -> ClusterState:
    """Cluster ``i``'s state after its last step, in the units a live cluster reports."""
    sc = sim.scenario
    m = sim.metrics[i]
    c = sim.cluster_state[i]
    ps = sim.pool_state[i]
    caps = pool_capacities_rps(sim)
    K = sim.substeps_per_step
    sub = int(c[dyn.CS_SUB])
    off = int(c[dyn.CS_OFF])
    wb = (off + sub) % sim.workload.n_bins
    spot_step = ((off + sub) // K) % sim.spot_series.shape[2]
    cache_keep = 1.0 - sc.workload.cache_hit_ratio
    pools = tuple(
        PoolState(
            name=p.name,
            purchase=p.purchase,
            quota=p.quota,
            warm_pool_max=p.warm_pool_max,
            on_demand_price_usd_h=p.price_usd_h,
            price_usd_h=float(ps[j, dyn.PS_PRICE]),
            capacity_rps=float(caps[j]),
            provisioning=float(ps[j, dyn.PS_PROV]),
            loading=float(ps[j, dyn.PS_LOAD]),
            ready=float(ps[j, dyn.PS_READY]),
            draining=float(ps[j, dyn.PS_DRAIN]),
            standby=float(ps[j, dyn.PS_STANDBY]),
            refilling=float(ps[j, dyn.PS_REFILL]),
            preempt_notices=float(ps[j, dyn.PS_NOTICED]),
            spot_capacity_share=float(sim.spot_series[2, j, spot_step]),
            batch_per_replica=float(ps[j, dyn.PS_BATCH]),
            max_num_seqs=p.profile.max_num_seqs,
        )
        for j, p in enumerate(sim.pools)
    )
    t = float(sub) * sc.substep_s
    return ClusterState(
        time_s=t,
        time_of_week_s=float(
            (sim.workload.start_s_of_week + (off + sub) * sc.substep_s) % (7 * 86400)
        ),
        interval_s=sc.control_interval_s,
        arrival_rate_rps=float(c[dyn.CS_RATE_LAST]),
        arrival_rate_ewma_rps=float(c[dyn.CS_RATE_EWMA]),
        forecast_rps=float(sim.workload_arrays[3, wb] * cache_keep),
        queue=float(m[dyn.M_QUEUE]),
        in_flight=float(m[dyn.M_INFLIGHT]),
        gpu_util=float(m[dyn.M_UTIL]),
        kv_util=float(m[dyn.M_KV_UTIL]),
        ttft_p50_s=float(m[dyn.M_TTFT50]),
        ttft_p95_s=float(m[dyn.M_TTFT95]),
        tpot_p95_s=float(m[dyn.M_TPOT95]),
        slo_attainment=float(m[dyn.M_ATTAIN]),
        dropped=float(m[dyn.M_DROPPED]),
        ttft_target_s=sc.slo.ttft_s,
        tpot_target_s=sc.slo.tpot_s,
        pools=pools,
    )


@dataclass
class EpisodeResult:
    """What one policy did over one episode of one cluster."""

    policy: str
    seed: int
    start_step: int
    summary: dict[str, Any]
    timeline: dict[str, np.ndarray] = field(default_factory=dict)


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
    caps = pool_capacities_rps(sim)
    gpu_s = np.zeros(len(names))
    cost_pool = np.zeros(len(names))
    totals = {"scale_events": 0.0, "cold_starts": 0.0, "preemptions": 0.0, "tokens": 0.0}
    for _ in range(steps):
        state = observe(sim, 0)
        decision, memory = policy.decide(state, memory)
        action = decision_to_action(decision, state, names, sim.scenario.max_step)
        sim.step(action[None, :])
        m = sim.metrics[0]
        pm = sim.pool_metrics[0]
        gpu_s += pm[:, dyn.PM_REPLICA_S] * np.array([p.profile.gpus_per_replica for p in sim.pools])
        cost_pool += pm[:, dyn.PM_COST]
        totals["scale_events"] += m[dyn.M_SCALE_EVENTS]
        totals["cold_starts"] += m[dyn.M_COLD_STARTS] + m[dyn.M_WARM_STARTS]
        totals["preemptions"] += m[dyn.M_PREEMPTIONS]
        totals["tokens"] += m[dyn.M_TOKENS]
        if record:
            rec["arrival_rps"].append(m[dyn.M_RATE_RPS])
            rec["capacity_rps"].append(float(pm[:, dyn.PM_READY] @ caps))
            rec["cost_usd"].append(m[dyn.M_COST])
            rec["attainment"].append(m[dyn.M_ATTAIN])
            for j, name in enumerate(names):
                rec[f"ready/{name}"].append(pm[j, dyn.PM_READY])
    c = sim.counters(0)
    lat = sim.episode_latency(0)
    cost = float(sim.metrics[0, dyn.M_COST_TOTAL])
    summary = {
        "cost_usd": cost,
        "cost_per_million_tokens_usd": cost / max(totals["tokens"], 1.0) * 1e6,
        "slo_attainment": float(sim.metrics[0, dyn.M_ATTAIN_EP]),
        **lat,
        "dropped": c["dropped"],
        "completed": c["completed"],
        "scale_events": totals["scale_events"],
        "cold_starts": totals["cold_starts"],
        "preemptions": totals["preemptions"],
        "gpu_hours": {n: float(g / 3600.0) for n, g in zip(names, gpu_s, strict=True)},
        "cost_by_pool_usd": {n: float(v) for n, v in zip(names, cost_pool, strict=True)},
        "cost_by_tenant_usd": sim.tenant_costs(0),
    }
    timeline = {k: np.asarray(v) for k, v in rec.items()} if record else {}
    return EpisodeResult(policy.name, seed, int(sim.start_steps[0]), summary, timeline)
