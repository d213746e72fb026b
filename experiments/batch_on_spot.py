"""Batch work on spot and spare capacity: what it saves at the same interactive SLO.

``python -m rlscale.experiments.batch_on_spot --scenario azure-conv-batch --seeds 0 1 2`` runs
one episode window (the scenario's first, ``--start-step``) of the scenario in three pool
layouts, each with the spot-aware baseline (as registered, and with ``--fast-params``) and the
oracle (tuned over all the seeds at once, :func:`~rlscale.agents.oracle.tune_oracle`):

* ``all-interactive``: the scenario without its ``workload.batch`` section, so every request
  is interactive and runs on demand (the spot pool serves batch only, so it stays empty):
  how the service runs today;
* ``shared``: the scenario as written: batch requests fill the room interactive ones leave on
  the on-demand pool, and the batch-only spot pool takes the backlog;
* ``split``: the on-demand pool serves interactive requests only, batch runs on spot alone.

It prints a Markdown table (mean cost over the seeds, the worst seed's interactive SLO
attainment and batch share completed within the deadline, the cost allocated to batch and
the spot pool's cost) and, last, one JSON line with every number. CPU time is this process's
(``time.process_time``), on one core.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

LAYOUTS = ("all-interactive", "shared", "split")
"""The pool layouts compared (see the module docstring)."""

FAST_PARAMS = {"upscale_delay_s": 30.0}
"""The spot-aware baseline's second setting: up-scaling after one decision above target
instead of SkyServe's 300 s, which lets the all-interactive layout meet the SLO."""


def layout_scenario(scenario: Any, layout: str) -> Any:
    """``scenario`` (a :class:`~rlscale.envs.scenario.Scenario` with batch work and an
    on-demand pool first) in one of :data:`LAYOUTS`."""
    from rlscale.envs.scenario import ScenarioError

    if layout not in LAYOUTS:
        raise ScenarioError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if scenario.workload.batch is None:
        raise ScenarioError(f"scenario '{scenario.name}' has no workload.batch section")
    if layout == "all-interactive":
        workload = scenario.workload.model_copy(update={"batch": None})
        return scenario.model_copy(update={"workload": workload})
    if layout == "split":
        pools = [
            p.model_copy(update={"serves": "interactive"}) if p.purchase == "on_demand" else p
            for p in scenario.pools
        ]
        return scenario.model_copy(update={"pools": pools})
    return scenario


def compare(
    scenario: str, seeds: list[int], start_step: int = 0, layouts: tuple[str, ...] = LAYOUTS
) -> list[dict[str, Any]]:
    """One row per (layout, policy)."""
    import numpy as np

    from rlscale.agents.observe import run_episode
    from rlscale.agents.oracle import tune_oracle
    from rlscale.agents.registry import make_policy
    from rlscale.envs.scenario import load_scenario
    from rlscale.envs.simulator import ClusterSimulator

    base = load_scenario(scenario)
    rows = []
    for layout in layouts:
        sc = layout_scenario(base, layout)
        sim = ClusterSimulator(sc, 1)
        runs: list[tuple[str, Any, float]] = []
        for label, params in (("spot_aware", {}), ("spot_aware (fast)", FAST_PARAMS)):
            cpu = time.process_time()
            policy = make_policy("spot_aware", sc, params)
            summaries = [
                run_episode(policy, sim, seed=s, start_step=start_step).summary for s in seeds
            ]
            runs.append((label, summaries, time.process_time() - cpu))
        cpu = time.process_time()
        tuned = tune_oracle(sim, start_step, seeds)
        summaries = [
            run_episode(tuned.policy, sim, seed=s, start_step=start_step).summary for s in seeds
        ]
        runs.append(("oracle", summaries, time.process_time() - cpu))
        spot = [p.name for p in sc.pools if p.purchase == "spot"]
        for label, summaries, cpu_s in runs:
            rows.append(
                {
                    "layout": layout,
                    "policy": label,
                    "cost_usd": float(np.mean([s["cost_usd"] for s in summaries])),
                    "slo_attainment": min(s["slo_attainment"] for s in summaries),
                    "batch_attainment": min(s.get("batch_attainment", 1.0) for s in summaries),
                    "batch_cost_usd": float(
                        np.mean(
                            [s.get("cost_by_class_usd", {}).get("batch", 0.0) for s in summaries]
                        )
                    ),
                    "spot_cost_usd": float(
                        np.mean([sum(s["cost_by_pool_usd"][n] for n in spot) for s in summaries])
                    ),
                    "batch_expired": max(s.get("batch", {}).get("expired", 0.0) for s in summaries),
                    "cpu_s": cpu_s,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison table (see the module docstring)."""
    head = [
        "layout",
        "policy",
        "cost (USD)",
        "interactive SLO attainment",
        "batch within deadline",
        "of which batch (USD)",
        "spot (USD)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---" + "|---:" * (len(head) - 2) + "|"]
    for r in rows:
        batch = r["layout"] != "all-interactive"
        cells = [
            r["layout"],
            r["policy"],
            f"{r['cost_usd']:.2f}",
            f"{r['slo_attainment']:.4f}",
            f"{r['batch_attainment']:.4f}" if batch else "(served as interactive)",
            f"{r['batch_cost_usd']:.2f}" if batch else "-",
            f"{r['spot_cost_usd']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run :func:`compare`, print the table and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="azure-conv-batch")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--start-step", type=int, default=0)
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    args = p.parse_args(argv)
    rows = compare(args.scenario, args.seeds, args.start_step, tuple(args.layouts))
    print(markdown(rows))
    print(json.dumps({"scenario": args.scenario, "seeds": args.seeds, "rows": rows}))


if __name__ == "__main__":
    main()
