"""``rlscale bench evaluate``: one evaluation grid's wall time on each backend.

The same grid (policies x held-out windows x seeds, with the oracle) runs in three
configurations, each in a fresh Python process so none inherits another's warm workers:

- ``in_process``: ``--backend local --workers 1`` (a plain loop, one core);
- ``local``: ``--backend local`` with every core of this machine, in spawned processes;
- ``ray``: ``--backend ray --workers 2``, a local Ray cluster started by the run.

Warm state is the same for each: the parent compiles the simulator's numba kernels into their
on-disk cache first (one short episode), and each configuration's process loads them before
its clock starts (another short episode); its workers load them from that cache as part of
their start, as a real run's do. A configuration's wall time covers what its command would
do: starting workers or the Ray cluster, the grid, and gathering the results (not writing
files). Besides it, each reports its own CPU time with its children's, the machine's load
average before and after, per-task CPU times (the in-process one feeds the scale-out model of
:mod:`~rlscale.experiments.scaleout`) and the backend's fixed costs measured after the grid:
the start of workers that build the evaluation's state and run nothing, and the cost of one
empty task on warm workers. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONFIGS = ("in_process", "local", "ray")
TARGET_RATIO = 0.6
"""Issue 12: each parallel backend at most this share of the one-worker wall time."""
DEFAULT_SCENARIO = "servegen-m-large"
DEFAULT_POLICIES = ("static", "hpa", "predictive")
RAY_WORKERS = 2
NOOP_TASKS = 200
"""Empty tasks timed on warm workers for the per-task cost."""


def _backend(config: str) -> Any:
    from rlscale.common.backends import Backend

    if config == "in_process":
        return Backend("local", 1)
    if config == "local":
        return Backend("local", None)
    if config == "ray":
        return Backend("ray", RAY_WORKERS)
    raise ValueError(f"configs must be in {list(CONFIGS)}, got {config!r}")


def _nothing(context: Any) -> None:
    return None


def _noop(state: Any, task: Any) -> None:
    return None


def warm_up(scenario: str) -> float:
    """One short static episode on the scenario's first held-out window: compiles the
    simulator's kernels (or loads them from numba's cache). Returns its wall seconds."""
    from rlscale.agents.observe import run_episode
    from rlscale.agents.static import StaticPolicy
    from rlscale.envs.scenario import load_scenario
    from rlscale.envs.simulator import ClusterSimulator
    from rlscale.envs.splits import split_scenario

    tic = time.perf_counter()
    sc, _ = split_scenario(load_scenario(scenario))
    sim = ClusterSimulator(sc, 1)
    run_episode(StaticPolicy({p.name: 1 for p in sc.pools}), sim, seed=0, start_step=0)
    return time.perf_counter() - tic


def _fixed_costs(config: str, scenario: str, backend: Any) -> dict[str, float]:
    """After the grid: workers' start (spawn, imports, the evaluation's state built, nothing
    run) and one empty task's cost on warm workers."""
    from rlscale.common.backends import Job, run_tasks

    if config == "in_process":
        return {}
    n = backend.n_workers
    fixed = {} if config == "ray" else {"worker_setup_s": _worker_setup(scenario, backend)}
    # one empty task's cost: n empty tasks against NOOP_TASKS of them, the difference shared
    # by the workers (a local pool is started for each list, so its start cancels out)
    job = Job(_nothing, _noop, None)
    if config == "ray":
        run_tasks(job, [None] * n, backend, progress=False)  # the job's state on its workers
    times = []
    for count in (n, NOOP_TASKS):
        tic = time.perf_counter()
        run_tasks(job, [None] * count, backend, progress=False)
        times.append(time.perf_counter() - tic)
    per_task = max(times[1] - times[0], 0.0) * n / (NOOP_TASKS - n)
    return {**fixed, "per_task_s": per_task}


def _worker_setup(scenario: str, backend: Any) -> float:
    """Wall seconds for every worker to build the evaluation's state and run nothing (for
    local: processes spawned for it; for Ray: the cluster's workers, fresh if none ran yet)."""
    from rlscale.common.backends import Job, run_tasks
    from rlscale.envs.scenario import load_scenario
    from rlscale.envs.splits import split_scenario
    from rlscale.experiments.grid import EpisodeRunner

    sc, _ = split_scenario(load_scenario(scenario))
    tic = time.perf_counter()
    run_tasks(Job(EpisodeRunner, _noop, sc), [None] * backend.n_workers, backend, progress=False)
    return time.perf_counter() - tic


def measure(
    config: str,
    scenario: str,
    policies: list[str],
    seeds: int,
    max_windows: int,
    include_oracle: bool,
) -> dict[str, Any]:
    """One configuration, in this process: warm up, time the grid, then the fixed costs."""
    from rlscale.experiments.evaluate import evaluate

    backend = _backend(config)
    warm_s = warm_up(scenario)
    load_before = os.getloadavg()
    fixed: dict[str, float] = {}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        if config == "ray":
            from rlscale.common.backends import ray_init

            ray_init(backend)
            fixed["ray_start_s"] = time.perf_counter() - wall0
            # fresh workers: process start, imports, kernels loaded, the evaluation's state
            fixed["worker_setup_s"] = _worker_setup(scenario, backend)
        evaluation = evaluate(
            scenario,
            policies,
            seeds=seeds,
            max_windows=max_windows,
            include_oracle=include_oracle,
            progress=False,
            backend=backend,
        )
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        load_after = os.getloadavg()
        fixed.update(_fixed_costs(config, scenario, backend))
    finally:
        if config == "ray":  # the cluster this configuration started, whatever happened
            import ray

            ray.shutdown()
    grid_wall = wall - fixed.get("ray_start_s", 0.0) - fixed.get("worker_setup_s", 0.0)
    grid_wall = grid_wall if config == "ray" else wall
    task_cpu = sum(t["cpu_s"] or 0.0 for t in evaluation.task_cpu_s)
    timing = evaluation.results.oracle_cpu_s
    return {
        "backend": backend.describe(),
        "workers": backend.n_workers,
        "wall_s": wall,
        "grid_wall_s": grid_wall,
        "task_cpu_s": task_cpu,
        # cores the tasks got on average while the grid ran: at most the workers, less when
        # other work on the machine takes its share
        "cores_obtained": task_cpu / grid_wall,
        "driver_cpu_s": cpu,
        "warm_up_s": warm_s,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "oracle_cpu_s": None if timing is None else timing.to_json(),
        "tasks": evaluation.task_cpu_s,
        "fixed": fixed,
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_evaluate(
    scenario: str = DEFAULT_SCENARIO,
    policies: list[str] | None = None,
    *,
    seeds: int = 4,
    max_windows: int = 1,
    include_oracle: bool = True,
    configs: tuple[str, ...] = CONFIGS,
) -> dict[str, Any]:
    """Each configuration in a fresh process, after warming numba's cache here.

    :raises ValueError: an unknown configuration, or one without ``in_process`` to compare.
    :raises RuntimeError: a configuration's process failed (its stderr's end in the message).
    """
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        raise ValueError(f"configs must be in {list(CONFIGS)}, got {list(configs)}")
    if "in_process" not in configs:
        raise ValueError("configs need in_process: the ratios are to its wall time")
    policies = list(policies or DEFAULT_POLICIES)
    compile_s = warm_up(scenario)
    grid = {
        "scenario": scenario,
        "policies": policies,
        "oracle": include_oracle,
        "seeds": seeds,
        "max_windows": max_windows,
        "describe": (
            f"{scenario}: {'+'.join(policies)}{' + oracle' if include_oracle else ''}, "
            f"{seeds} seeds, {max_windows} window(s)"
        ),
    }
    out: dict[str, Any] = {
        "benchmark": "evaluate",
        "grid": grid,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "numba_warm_up_s": compile_s,
        "target_ratio": TARGET_RATIO,
        "configs": {},
    }
    for config in configs:
        cmd = [
            sys.executable,
            "-m",
            "rlscale.experiments.bench_evaluate",
            "--one",
            config,
            "--grid-json",
            json.dumps(grid),
        ]
        cpu0 = _children_cpu()
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"bench evaluate ({config}) failed:\n{run.stderr[-4000:]}")
        row = json.loads(run.stdout.strip().splitlines()[-1])
        # the process and every child it reaped: spawned workers; Ray's, as far as reaped
        row["process_cpu_s"] = _children_cpu() - cpu0
        out["configs"][config] = row
    base = out["configs"]["in_process"]["wall_s"]
    ratios = {c: r["wall_s"] / base for c, r in out["configs"].items() if c != "in_process"}
    out["ratio_to_in_process"] = ratios
    out["meets_target"] = {c: r <= TARGET_RATIO for c, r in ratios.items()}
    return out


def add_bench_evaluate_parser(bsub: argparse._SubParsersAction) -> None:
    """``rlscale bench evaluate`` on ``rlscale bench``'s subparsers."""
    p = bsub.add_parser(
        "evaluate",
        help="one evaluation grid's wall time in process, on local processes and on Ray",
    )
    p.add_argument("--scenario", default=DEFAULT_SCENARIO, help="scenario name or YAML path")
    p.add_argument(
        "--policy",
        action="append",
        default=None,
        help=f"a baseline of the grid; repeat (default {' '.join(DEFAULT_POLICIES)})",
    )
    p.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1 (default 4)")
    p.add_argument("--max-windows", type=int, default=1, help="held-out windows (default 1)")
    p.add_argument("--no-oracle", action="store_true", help="leave the oracle out")
    p.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"configurations to time, comma-separated (default {','.join(CONFIGS)})",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")


def run_bench_evaluate(args: argparse.Namespace) -> int:
    """Run ``rlscale bench evaluate``; the last line printed is the JSON object."""
    from rlscale.envs.scenario import ScenarioError

    configs = tuple(c for c in args.configs.split(",") if c)
    try:
        result = bench_evaluate(
            args.scenario,
            args.policy,
            seeds=args.seeds,
            max_windows=args.max_windows,
            include_oracle=not args.no_oracle,
            configs=configs,
        )
    except ValueError as err:
        raise ScenarioError(str(err)) from None
    text = json.dumps(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


def _main() -> None:
    p = argparse.ArgumentParser(description="one configuration of rlscale bench evaluate")
    p.add_argument("--one", choices=CONFIGS, required=True)
    p.add_argument("--grid-json", required=True)
    args = p.parse_args()
    g = json.loads(args.grid_json)
    row = measure(args.one, g["scenario"], g["policies"], g["seeds"], g["max_windows"], g["oracle"])
    print(json.dumps(row))


if __name__ == "__main__":
    _main()
