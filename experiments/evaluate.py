"""Offline policy evaluation: every policy on held-out windows over several seeds.

``rlscale evaluate`` replays the held-out part of a scenario's workload (or of a user's own
trace, ``--trace``) through the simulator for each policy and reports, per policy, the mean and
95% confidence interval over seeds of cost, SLO attainment, latency percentiles, scale events,
cold starts, preemptions, GPU-hours by pool and cost per tenant.

The grid. Held-out windows are the ``test_starts`` of
:func:`~rlscale.envs.splits.split_scenario` (the last part of the workload, never used
for tuning or training). With ``windows="all"`` (the default) every seed runs every held-out
window and a seed's value of a metric is its mean over the windows, so each metric is *per
episode* and the interval is over seeds. With ``windows="cycle"`` seed ``s`` runs only window
``s mod W``: cheaper, and the interval then also covers the spread between windows. Every
episode of seed ``s`` starts from the random stream ``s`` for every policy (common random
numbers), which takes much of the noise out of differences between policies. The replayed
trace itself is fixed (workload seed 0); seeds vary the cluster's randomness (cold-start
durations, spot prices and preemptions, Poisson arrivals of synthetic load).

Three steps, each in its own module: the grid of independent episode tasks
(:mod:`~rlscale.experiments.grid`), run on a backend (:mod:`rlscale.common.backends`: in
this process, local processes, or Ray), then aggregated (:mod:`~rlscale.experiments.results`);
the report (:mod:`~rlscale.experiments.report`) reads the aggregate.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlscale.common.backends import Backend, BackendError, add_backend_arguments, backend_from_args
from rlscale.envs.scenario import Scenario, ScenarioError, load_scenario, scenario_from_dict
from rlscale.experiments.grid import (
    PolicySpec,
    WindowMode,
    baseline_specs,
    default_policies,
    parse_policy_arg,
)
from rlscale.experiments.results import Evaluation, write_results

# The simulator (numba), scipy and the policies are imported where they are used: the CLI
# imports this module to build its parser, and `rlscale --help` should not compile kernels.

TRACE_FORMATS = ("azure", "mooncake", "servegen", "csv")


def with_trace(
    scenario: Scenario,
    trace: str | Path,
    trace_format: str,
    *,
    target_mean_rps: float | None = None,
) -> Scenario:
    """``scenario`` replaying a user's trace instead of its own workload.

    The trace replays as recorded: the old workload's window (``window_start_h``,
    ``window_hours``), rescaling (``time_scale``, ``rate_scale``, ``target_mean_rps``) and
    synthetic settings describe the old source and are dropped. ``target_mean_rps`` rescales
    the new trace to that mean rate as a workload's own ``target_mean_rps`` does (recorded
    traces thinned below their rate, superposed with shifted copies above; ServeGen rates
    scaled), for example to replay another trace family at the load the pools were sized for.
    What describes the service is kept: token-length distributions (for formats without token
    counts), the response-cache hit ratio, and the week clock.

    :raises ScenarioError: unknown format, or a workload that does not validate.
    """
    if trace_format not in TRACE_FORMATS:
        raise ScenarioError(
            f"--trace-format must be one of {list(TRACE_FORMATS)}, got {trace_format!r}"
        )
    path = Path(trace).expanduser()
    if not path.exists():
        raise ScenarioError(f"--trace {path}: no such file or folder")
    raw = scenario.model_dump(mode="json")
    workload = raw["workload"]
    workload.update(
        kind=trace_format,
        path=str(path.resolve()),
        synthetic=None,
        window_start_h=0.0,
        window_hours=None,
        time_scale=1.0,
        rate_scale=1.0,
        target_mean_rps=target_mean_rps,
    )
    return scenario_from_dict(raw, f"{scenario.name} with --trace {path}")


def evaluate(
    scenario: str | Path | Scenario,
    policies: Sequence[PolicySpec | str] | None = None,
    *,
    seeds: int | Sequence[int] = 5,
    trace: str | Path | None = None,
    trace_format: str | None = None,
    trace_mean_rps: float | None = None,
    windows: WindowMode = "all",
    max_windows: int | None = None,
    include_oracle: bool = True,
    n_top_tenants: int = 10,
    progress: bool = True,
    backend: Backend | None = None,
) -> Evaluation:
    """Evaluate ``policies`` on ``scenario``'s held-out windows over ``seeds``.

    :param scenario: shipped scenario name, YAML path, or :class:`Scenario`.
    :param policies: specs or ``NAME[=PARAMS.json]`` strings; None: every registered baseline.
    :param seeds: a count ``N`` (seeds ``0..N-1``) or the seeds themselves.
    :param trace: a user's trace replacing the scenario's workload (see :func:`with_trace`).
    :param trace_format: the trace's format: ``azure``, ``mooncake``, ``servegen`` or ``csv``.
    :param trace_mean_rps: rescale ``trace`` to this mean arrival rate (None: as recorded).
    :param windows: ``all``: every seed runs every held-out window; ``cycle``: seed ``s`` runs
        window ``s mod W`` only.
    :param max_windows: evaluate only the first this many held-out windows.
    :param include_oracle: add the oracle when it is registered and not already listed.
    :param n_top_tenants: tenants reported by name; the rest are summed as ``other``.
    :param progress: show a progress bar over the grid.
    :param backend: where the grid's episodes run (default: in this process; see
        :mod:`rlscale.common.backends`). Results are the same on every backend.
    :raises ScenarioError: a bad scenario, trace, policy name, or grid setting.
    """
    from rlscale.agents.registry import known_policies
    from rlscale.common.backends import run_tasks
    from rlscale.envs.splits import split_scenario
    from rlscale.experiments.grid import (
        EpisodeRunner,
        episode_job,
        grid_tasks,
        oracle_name,
        with_labels,
    )
    from rlscale.experiments.results import summarize

    sc = load_scenario(scenario)
    if (trace is None) != (trace_format is None):
        raise ScenarioError("--trace and --trace-format go together: give both or neither")
    if trace_mean_rps is not None and trace is None:
        raise ScenarioError("--trace-mean-rps rescales a --trace; give the trace too")
    if trace is not None and trace_format is not None:
        sc = with_trace(sc, trace, trace_format, target_mean_rps=trace_mean_rps)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ScenarioError(f"--seeds must be at least 1, got {seeds}")
    if len(set(seed_list)) != len(seed_list):
        raise ScenarioError(f"--seeds must be distinct, got {seed_list}")
    if max_windows is not None and max_windows < 1:
        raise ScenarioError(f"--max-windows must be at least 1, got {max_windows}")
    if n_top_tenants < 0:
        raise ScenarioError(f"n_top_tenants must be >= 0, got {n_top_tenants}")

    specs = [parse_policy_arg(p) if isinstance(p, str) else p for p in (policies or [])]
    if policies is None:
        specs = default_policies()
    known = set(known_policies())
    for spec in specs:
        if spec.name not in known:
            raise ScenarioError(f"unknown policy '{spec.name}'; known: {sorted(known)}")
    oracle = oracle_name()
    if include_oracle and oracle is not None and all(s.name != oracle for s in specs):
        specs.append(PolicySpec(oracle))
    if not specs:
        raise ScenarioError(f"no policies to evaluate; known: {sorted(known)}")
    specs = with_labels(specs)

    sc, split = split_scenario(sc)
    runner = EpisodeRunner(sc)
    # parameter files are read here, once: bad ones fail before any episode runs, and remote
    # workers get the parameters themselves, not a path on this machine
    specs = [replace(spec, params=spec.params_dict()) for spec in specs]
    for spec in specs:
        if not spec.per_episode:
            runner.policy(spec)  # in this process, the policy every episode runs
    test_starts = list(split.test_starts[:max_windows] if max_windows else split.test_starts)
    caps = runner.sim.pool_capacity_rps

    tasks = grid_tasks(specs, seed_list, test_starts, windows)
    results = run_tasks(
        episode_job(sc),
        tasks,
        backend,
        state=runner,
        progress=progress,
        desc=f"evaluate {sc.name}",
        unit="episode",
        label=lambda t: f"{t.spec.display} seed={t.seed} start={t.start_step}",
        heavy=lambda t: t.spec.per_episode,  # an oracle solve outlasts many episodes
    )
    return summarize(
        sc,
        split,
        specs,
        list(zip(tasks, results, strict=True)),
        seeds=seed_list,
        windows=windows,
        test_starts=test_starts,
        trace_replaced=trace is not None,
        n_top_tenants=n_top_tenants,
        pool_capacity_rps={p.name: float(c) for p, c in zip(sc.pools, caps, strict=True)},
    )


# --- command line --------------------------------------------------------------------------------


def add_evaluate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to ``rlscale``'s subparsers."""
    p = sub.add_parser(
        "evaluate",
        help="compare policies on held-out traffic: results.json, report.html, an MLflow run",
        description=(
            "Replay the held-out windows of a scenario's workload (or of your own trace, "
            "--trace) through the simulator for each policy over several seeds. Writes "
            "results.json (mean and 95% CI over seeds per metric) and a self-contained "
            "report.html to --out, and logs both to an MLflow run (MLFLOW_TRACKING_URI, "
            "default sqlite:///mlflow.db)."
        ),
    )
    p.add_argument("--scenario", required=True, help="shipped scenario name or YAML path")
    p.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="your own trace file (or ServeGen folder) replacing the scenario's workload",
    )
    p.add_argument("--trace-format", choices=TRACE_FORMATS, default=None)
    p.add_argument(
        "--trace-mean-rps",
        type=float,
        default=None,
        help="rescale --trace to this mean request rate (default: as recorded)",
    )
    p.add_argument(
        "--policy",
        action="append",
        default=None,
        metavar="NAME[=PARAMS.json]",
        help="a policy, optionally with a parameter file (a tuning result); onnx=FOLDER for "
        "an exported policy; ppo=SPEC for a trained one wherever it is (models:/NAME@ALIAS, "
        "models:/NAME/N, an MLflow run id, or an export folder); repeat for several "
        "(default: every registered baseline). The oracle is added when registered.",
    )
    p.add_argument(
        "--tuned",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="add every baseline tuned in DIR (default out/tuning/<scenario>; each with its "
        "defaults when none is tuned), beside the --policy ones",
    )
    p.add_argument("--seeds", type=int, default=5, help="run seeds 0..N-1 (default 5)")
    p.add_argument(
        "--windows",
        choices=("all", "cycle"),
        default="all",
        help="all: every seed runs every held-out window (default); cycle: seed s runs "
        "window s mod W",
    )
    p.add_argument(
        "--max-windows", type=int, default=None, help="use only the first N held-out windows"
    )
    p.add_argument("--top-tenants", type=int, default=10, help="tenants reported by name")
    p.add_argument("--no-oracle", action="store_true", help="do not add the oracle")
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_backend_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="default out/evaluate/<scenario>")
    return p


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``rlscale evaluate``; prints one JSON line with the output paths and MLflow run.

    :returns: 0; 2 when MLflow is missing (checked before the grid runs) or the backend
        cannot run (Ray missing or unreachable); 1 when the run could
        not be logged (results.json and report.html are written all the same).
    :raises ScenarioError: bad arguments (the CLI prints it and exits 2).
    """
    from rlscale.common.tracking import TrackingError, require_mlflow
    from rlscale.experiments.report import write_report
    from rlscale.experiments.results import log_evaluation

    if not args.no_mlflow:
        try:
            require_mlflow()  # fail before the grid runs, not after
        except TrackingError as err:
            print(f"rlscale: {err}", file=sys.stderr)
            return 2
    try:
        backend = backend_from_args(args)
    except ValueError as err:
        raise ScenarioError(str(err)) from None
    policies = [parse_policy_arg(p) for p in args.policy] if args.policy else None
    if args.tuned is not None:
        from rlscale.agents.tuning import tuning_dir

        sc = load_scenario(args.scenario)
        folder = Path(args.tuned) if args.tuned else tuning_dir(sc.name)
        tuned, note = baseline_specs(sc, folder)
        print(f"rlscale evaluate: {note}", file=sys.stderr)
        policies = [*(policies or []), *tuned]
    try:
        evaluation = evaluate(
            args.scenario,
            policies,
            seeds=args.seeds,
            trace=args.trace,
            trace_format=args.trace_format,
            trace_mean_rps=args.trace_mean_rps,
            windows=args.windows,
            max_windows=args.max_windows,
            include_oracle=not args.no_oracle,
            n_top_tenants=args.top_tenants,
            progress=not args.no_progress,
            backend=backend,
        )
    except BackendError as err:
        print(f"rlscale: {err}", file=sys.stderr)
        return 2
    out_dir = args.out or Path("out/evaluate") / evaluation.results.scenario
    results_path = write_results(evaluation, out_dir)
    report_path = write_report(evaluation, out_dir)
    line: dict[str, Any] = {"results": str(results_path), "report": str(report_path)}
    if not args.no_mlflow:
        try:
            run = log_evaluation(evaluation.results, [results_path, report_path])
        except TrackingError as err:
            # the results are on disk; say where, and that only the run is missing
            print(json.dumps(line))
            print(f"rlscale: {err}", file=sys.stderr)
            return 1
        line.update(mlflow_run_id=run.run_id, mlflow_tracking_uri=run.tracking_uri)
    print(json.dumps(line))
    return 0
