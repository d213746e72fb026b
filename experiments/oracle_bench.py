"""The oracle's time and cost per episode window, as first written and as solved now.

``python -m rlscale.experiments.oracle_bench --scenario servegen-m-large --seeds 0 1 2`` tunes
the oracle (:func:`~rlscale.agents.oracle.tune_oracle`, what evaluation runs for every
episode) on the first held-out window for each seed, once with the serving counts declared
integer (the default) and once with them continuous (the program as first written), and
prints a Markdown table of CPU time, wall time and replayed cost; the last line is one JSON
object with every number. CPU time is this process's (``time.process_time``), on one core.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

FORMULATIONS = {"integral": True, "continuous": False}
"""Name -> ``integral_serving`` of :func:`~rlscale.agents.oracle.solve_inputs`."""


def bench_oracle(
    scenario: str, seeds: list[int], formulations: list[str], window: int = 0
) -> list[dict[str, Any]]:
    """One row per (seed, formulation): time, replayed cost and what the tuning chose."""
    from rlscale.agents.observe import run_episode
    from rlscale.agents.oracle import tune_oracle
    from rlscale.agents.static import StaticPolicy
    from rlscale.envs.scenario import ScenarioError, load_scenario
    from rlscale.envs.simulator import ClusterSimulator
    from rlscale.envs.splits import split_scenario

    unknown = [f for f in formulations if f not in FORMULATIONS]
    if unknown:
        raise ScenarioError(f"formulations must be in {list(FORMULATIONS)}, got {unknown}")
    sc, split = split_scenario(load_scenario(scenario))
    if not 0 <= window < len(split.test_starts):
        raise ScenarioError(
            f"--window {window}: {sc.name} has {len(split.test_starts)} held-out windows"
        )
    start = split.test_starts[window]
    sim = ClusterSimulator(sc, 1)
    # compile the simulator's kernels first, so no row's time includes them
    run_episode(StaticPolicy({p.name: 1 for p in sc.pools}), sim, seed=0, start_step=start)
    rows = []
    for seed in seeds:
        for name in formulations:
            cpu, wall = time.process_time(), time.perf_counter()
            tuned = tune_oracle(sim, start, seed, integral_serving=FORMULATIONS[name])
            rows.append(
                {
                    "seed": seed,
                    "formulation": name,
                    "start_step": int(start),
                    "cpu_s": time.process_time() - cpu,
                    "wall_s": time.perf_counter() - wall,
                    "cost_usd": tuned.replay["cost_usd"],
                    "slo_attainment": tuned.replay["slo_attainment"],
                    "meets_slo": tuned.meets_slo,
                    "lead_quantile": tuned.policy.info["lead_quantile"],
                    "utilization": tuned.schedule.utilization,
                    "trials": len(tuned.trials),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """Per seed: CPU time and replayed cost of each formulation side by side."""
    names = list(dict.fromkeys(r["formulation"] for r in rows))
    head = ["seed"]
    head += [f"{n} CPU (s)" for n in names] + [f"{n} cost (USD)" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for seed in dict.fromkeys(r["seed"] for r in rows):
        by = {r["formulation"]: r for r in rows if r["seed"] == seed}
        cells = [str(seed)] + [f"{by[n]['cpu_s']:.1f}" for n in names]
        cells += [f"{by[n]['cost_usd']:.2f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run :func:`bench_oracle`, print the table and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="servegen-m-large")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--window", type=int, default=0, help="index of the held-out window")
    p.add_argument(
        "--formulations", nargs="+", default=list(FORMULATIONS), choices=list(FORMULATIONS)
    )
    args = p.parse_args(argv)
    rows = bench_oracle(args.scenario, args.seeds, args.formulations, args.window)
    print(markdown(rows))
    print(json.dumps({"scenario": args.scenario, "rows": rows}))


if __name__ == "__main__":
    main()
