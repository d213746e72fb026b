"""Run a scenario end to end under a fixed scaler: the ``rlscale simulate`` job."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rlscale.envs.scenario import Scenario, ScenarioError, load_scenario
from rlscale.envs.simulator import ClusterSimulator


def with_fixed_replicas(scenario: Scenario, replicas: dict[str, int]) -> Scenario:
    """The scenario with some pools' ``initial_replicas`` replaced (checked against quotas)."""
    for name in replicas:
        scenario.pool(name)  # raises with the known names for an unknown pool
    pools = []
    for pool in scenario.pools:
        n = replicas.get(pool.name, pool.initial_replicas)
        if n < 0 or n > pool.quota:
            raise ScenarioError(
                f"--replicas {pool.name}={n}: must be within [0, quota={pool.quota}]"
            )
        pools.append(pool.model_copy(update={"initial_replicas": n, "warm_pool_max": 0}))
    return scenario.model_copy(update={"pools": pools})


def simulate_static(
    scenario: str | Path | Scenario,
    *,
    replicas: dict[str, int] | None = None,
    hours: float | None = None,
    start_step: int = 0,
    seed: int = 0,
    out_dir: Path | None = None,
    plot: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Simulate ``scenario`` with a fixed replica count per pool and summarize it.

    :param replicas: pool name -> replica count; other pools keep their ``initial_replicas``.
    :param hours: simulated time (default: the scenario's ``episode_hours``).
    :param start_step: the workload's decision step the run starts at.
    :param out_dir: where ``summary.json``, ``timeline.csv`` and ``simulate.png`` go (None:
        nowhere).
    :returns: ``{"totals": {...}, "timeline": [...]}``.
    """
    sc = load_scenario(scenario)
    if hours is not None:
        if hours <= 0:
            raise ScenarioError(f"--hours must be positive, got {hours}")
        sc = sc.model_copy(update={"episode_hours": hours})
    sc = with_fixed_replicas(sc, replicas or {})
    sim = ClusterSimulator(sc, 1)
    sim.reset_cluster(0, np.random.default_rng(seed), start_step=start_step)
    cap = sim.pool_capacity_rps
    action = sim.noop_action()[None, :]
    timeline: list[dict[str, float]] = []
    dt_h = sc.control_interval_s / 3600.0
    for step in tqdm(
        range(sim.episode_steps),
        desc=f"simulate {sc.name}",
        unit="step",
        disable=not progress,
        mininterval=0.5,
    ):
        sim.step(action)
        info = sim.step_info(0)
        ready = np.array([info["replicas"][p.name]["ready"] for p in sim.pools])
        row = {
            "hour": (step + 1) * dt_h,
            "arrival_rps": info["load/arrival_rate_rps"],
            "ready_capacity_rps": float(ready @ cap),
            "ttft_p95_s": info["latency/ttft_p95_s"],
            "slo_attainment": info["slo/attainment"],
            "cost_usd": info["cost/usd"],
            "queue": info["load/queue"],
            "dropped": info["requests/dropped"],
        }
        for p, pool in enumerate(sim.pools):
            row[f"ready/{pool.name}"] = float(ready[p])
            row[f"cost/{pool.name}"] = info["cost/by_pool_usd"][pool.name]
        timeline.append(row)

    counters = sim.counters(0)
    last = sim.step_info(0)
    cost = last["cost/total_usd"]
    by_pool = {p.name: float(sum(r[f"cost/{p.name}"] for r in timeline)) for p in sim.pools}
    tenants = sim.tenant_costs(0)
    top = dict(sorted(tenants.items(), key=lambda kv: -kv[1])[:5])
    totals: dict[str, Any] = {
        "scenario": sc.name,
        "hours": sim.episode_steps * dt_h,
        "replicas": {p.name: float(sc.pool(p.name).initial_replicas) for p in sim.pools},
        "cost_usd": round(cost, 4),
        "slo_attainment": round(last["slo/attainment_episode"], 5),
        **{k: round(v, 4) for k, v in sim.episode_latency(0).items()},
        "completed": round(counters["completed"]),
        "dropped": round(counters["dropped"]),
        "cache_hits": round(counters["cache_hits"]),
        "cost_by_pool_usd": {k: round(v, 4) for k, v in by_pool.items()},
        "top_tenants_cost_usd": {k: round(v, 4) for k, v in top.items()},
    }
    result = {"totals": totals, "timeline": timeline}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(totals, indent=2))
        with (out / "timeline.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(timeline[0]))
            writer.writeheader()
            writer.writerows(timeline)
        if plot:
            plot_timeline(timeline, [p.name for p in sim.pools], sc, out / "simulate.png")
        _print_totals(totals, out)
    return result


def _print_totals(totals: dict[str, Any], out: Path) -> None:
    print(f"scenario {totals['scenario']}: {totals['hours']:.2f} h, replicas {totals['replicas']}")
    print(f"  cost            ${totals['cost_usd']:.2f}  by pool {totals['cost_by_pool_usd']}")
    print(f"  SLO attainment  {totals['slo_attainment']:.2%}")
    print(
        f"  TTFT p50/p95/p99 {totals['ttft_p50_s']:.3f} / {totals['ttft_p95_s']:.3f} / "
        f"{totals['ttft_p99_s']:.3f} s"
    )
    print(f"  completed {totals['completed']}, dropped {totals['dropped']}")
    print(f"  wrote {out / 'summary.json'}, {out / 'timeline.csv'}, {out / 'simulate.png'}")


def plot_timeline(
    timeline: list[dict[str, float]], pools: list[str], scenario: Scenario, path: Path
) -> Path:
    """Load against ready capacity, latency and attainment, and cost by pool, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = np.array([r["hour"] for r in timeline])
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    ax = axes[0]
    ax.plot(hours, [r["arrival_rps"] for r in timeline], lw=0.8, label="arrivals (req/s)")
    ax.plot(
        hours,
        [r["ready_capacity_rps"] for r in timeline],
        lw=1.5,
        label="ready capacity (req/s, saturated)",
    )
    ax.set_ylabel("requests / s")
    ax.legend(loc="upper left")
    ax.set_title(f"{scenario.name}: {scenario.description}")
    ax = axes[1]
    # a step that admitted nothing has no TTFT; floor it so the log axis keeps it visible
    ttft = np.maximum([r["ttft_p95_s"] for r in timeline], 1e-2)
    ax.plot(hours, ttft, lw=0.8, color="tab:red", label="TTFT p95")
    ax.axhline(scenario.slo.ttft_s, ls="--", color="tab:red", lw=0.8, label="TTFT target")
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax2 = ax.twinx()
    ax2.plot(
        hours,
        [r["slo_attainment"] for r in timeline],
        lw=0.8,
        color="tab:green",
        label="SLO attainment",
    )
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("attainment")
    ax.legend(loc="upper left")
    ax2.legend(loc="lower left")
    ax = axes[2]
    bottom = np.zeros(len(hours))
    for pool in pools:
        cum = np.cumsum([r[f"cost/{pool}"] for r in timeline])
        ax.fill_between(hours, bottom, bottom + cum, label=pool, alpha=0.7)
        bottom = bottom + cum
    ax.set_ylabel("cumulative cost (USD)")
    ax.set_xlabel("hours")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
