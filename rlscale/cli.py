"""The ``rlscale`` command line: one program, one subcommand per job.

Subcommands:
    simulate     simulate a scenario under a fixed scaler; print the result and plot it
    calibrate    fit throughput profiles from measured vLLM data (experiments/profiles/)
    bench env    measure simulator speed; the last line printed is one JSON object
    bench evaluate  one evaluation grid's wall time in process, on local processes, on Ray
    bench train  PPO env-steps/s on a scenario against CartPole-v1 (the same PPO settings)
    train        train a PPO scaler tracked in MLflow; registers it as challenger
    sweep        search training settings with Ray Tune; registers the best trial as challenger
    scenarios    list the scenarios that ship with the project
    data         list the public datasets, fetch them into $RLSCALE_DATA, refit shipped tables
    promote      move the champion alias to the challenger only when it is cheaper and meets the SLO
    cost-report  the bill by tenant, pool and purchase option over time, from an evaluation or
                 a shadow database
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlscale.envs.scenario import PROFILE_DIR, ScenarioError

DEFAULT_SIMULATE_SCENARIO = "servegen-m-large"


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a scenario under a fixed scaler, print and plot the result",
        description=(
            "Replay a scenario's workload through the cluster simulator with a fixed number of "
            "replicas per pool (the scenario's initial_replicas unless --replicas says "
            "otherwise). Writes summary.json, timeline.csv and simulate.png to --out."
        ),
    )
    p.add_argument(
        "--scenario",
        default=DEFAULT_SIMULATE_SCENARIO,
        help=f"shipped scenario name or YAML path (default {DEFAULT_SIMULATE_SCENARIO})",
    )
    p.add_argument(
        "--replicas",
        action="append",
        default=[],
        metavar="POOL=N",
        help="fixed replica count of a pool; repeat for several pools",
    )
    p.add_argument(
        "--hours",
        type=float,
        default=None,
        help="simulate this many hours (default: the scenario's episode)",
    )
    p.add_argument(
        "--start-step",
        type=int,
        default=0,
        help="decision step of the workload to start at (default 0)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out/simulate"))
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit throughput profiles from the Argonne vLLM measurements",
        description="Fit every throughput profile, write the YAMLs and calibration.png.",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="shared data folder (default: $RLSCALE_DATA or ../shared/data)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=PROFILE_DIR,
        help=f"where the profiles go (default {PROFILE_DIR})",
    )


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks; the last line printed is one JSON object")
    bsub = p.add_subparsers(dest="bench_target", required=True)
    e = bsub.add_parser("env", help="simulator steps per second, single and batched")
    e.add_argument(
        "--scenario",
        default=None,
        help="scenario for steps per second (default: the env's default)",
    )
    e.add_argument(
        "--episode-scenario",
        default="synthetic-2week",
        help="scenario whose whole episode is timed (default: two weeks)",
    )
    e.add_argument(
        "--sizes",
        default="1,64,1024",
        help="batch sizes of the batched simulator (comma-separated)",
    )
    e.add_argument(
        "--sync-sizes",
        default="64,1024",
        help="sizes at which to compare with gymnasium's SyncVectorEnv",
    )
    e.add_argument("--seconds", type=float, default=2.0, help="measuring time per configuration")
    t = bsub.add_parser(
        "train",
        help="PPO env-steps/s on a scenario against CartPole-v1, same PPO settings",
    )
    t.add_argument("--scenario", default=None, help="scenario (default: rlscale train's)")
    t.add_argument("--rollouts", type=int, default=3, help="PPO iterations timed per setting")
    t.add_argument(
        "--threads",
        default="one,default",
        help="thread settings, each in a fresh process: one (OMP/NUMBA_NUM_THREADS=1), default",
    )
    t.add_argument("--config", default=None, help="rlscale train settings file (PPO sizes)")
    from rlscale.training.bench import POLICIES

    t.add_argument(
        "--policy",
        choices=POLICIES,
        default=POLICIES[0],
        help="training's batched MultiDiscrete policy, or SB3's MlpPolicy (one Categorical a head)",
    )
    from rlscale.serving.bench import add_bench_serve_parser

    add_bench_serve_parser(bsub)
    from rlscale.experiments.bench_evaluate import add_bench_evaluate_parser

    add_bench_evaluate_parser(bsub)


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune-baseline",
        help="search baseline parameters on a scenario's training windows",
        description=(
            "Search each named baseline's parameters on the training windows of a scenario "
            "(never its held-out ones) for the lowest cost that meets the SLO target. Writes "
            "OUT/<policy>.json, which `rlscale evaluate --policy NAME=FILE` reads, and logs "
            "each search as an MLflow run (experiment rlscale-tune)."
        ),
    )
    p.add_argument("--scenario", required=True, help="shipped scenario name or YAML path")
    p.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="NAME",
        help="baseline to tune (repeat for several; 'all' for every baseline)",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per trial (default 1)")
    p.add_argument(
        "--max-trials",
        type=int,
        default=None,
        help="at most this many candidates per baseline (seeded sample)",
    )
    p.add_argument(
        "--max-windows", type=int, default=None, help="use only the first N training windows"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the tuned parameters go (default out/tuning/<scenario>)",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log MLflow runs")
    p.add_argument("--no-progress", action="store_true")
    from rlscale.common.backends import add_backend_arguments

    add_backend_arguments(p)


def run_tune(args: argparse.Namespace) -> int:
    """``rlscale tune-baseline``: tune, save, log; prints one JSON line of what was written."""
    from rlscale.agents.registry import baselines as registered_baselines
    from rlscale.agents.tuning import save_tuning, tune_baseline
    from rlscale.common.backends import BackendError, backend_from_args
    from rlscale.envs.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    try:
        backend = backend_from_args(args)
    except ValueError as err:
        raise ScenarioError(str(err)) from None
    baselines = registered_baselines()
    names = baselines if "all" in args.policy else args.policy
    unknown = [n for n in names if n not in baselines]
    if unknown:
        raise ScenarioError(f"cannot tune {unknown}; tunable baselines: {baselines}")
    if not args.no_mlflow:
        from rlscale.common.tracking import require_mlflow

        require_mlflow()
    from rlscale.agents.tuning import tuning_dir

    out_dir = args.out or tuning_dir(scenario.name)
    written = {}
    for name in names:
        try:
            result = tune_baseline(
                name,
                scenario,
                seeds=tuple(range(args.seeds)),
                max_trials=args.max_trials,
                max_windows=args.max_windows,
                progress=not args.no_progress,
                backend=backend,
            )
        except BackendError as err:
            print(f"rlscale: {err}", file=sys.stderr)
            return 2
        path = save_tuning(result, out_dir / f"{name}.json")
        written[name] = str(path)
        print(
            f"{name}: {json.dumps(result['params'])} cost ${result['cost_usd']:.2f} "
            f"attainment {result['slo_attainment']:.4f} meets SLO: {result['meets_slo']}"
        )
        if not args.no_mlflow:
            import time

            from rlscale.common.tracking import log_run

            log_run(
                experiment="rlscale-tune",
                run_name=f"{scenario.name}__tune-{name}__{args.seeds}__{int(time.time())}",
                command="tune-baseline",
                params={
                    "policy": name,
                    "scenario": scenario.name,
                    **{f"param/{k}": json.dumps(v) for k, v in result["params"].items()},
                },
                metrics={
                    "cost_usd": float(result["cost_usd"]),
                    "slo_attainment": float(result["slo_attainment"]),
                    "meets_slo": float(bool(result["meets_slo"])),
                    "trials": float(len(result["trials"])),
                },
                artifacts=[path],
            )
    print(json.dumps({"scenario": scenario.name, "tuned": written}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rlscale``."""
    parser = argparse.ArgumentParser(
        prog="rlscale", description="A reinforcement-learning autoscaler for GPU inference."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_simulate(sub)
    _add_calibrate(sub)
    _add_bench(sub)
    _add_tune(sub)
    from rlscale.experiments.evaluate import add_evaluate_parser

    add_evaluate_parser(sub)
    from rlscale.serving.cli import add_serve_parser

    add_serve_parser(sub)
    from rlscale.serving.shadow_report import add_shadow_report_parser

    add_shadow_report_parser(sub)
    from rlscale.experiments.cost_report import add_cost_report_parser

    add_cost_report_parser(sub)
    from rlscale.training.export import add_export_parser, add_register_parser

    add_export_parser(sub)
    add_register_parser(sub)
    from rlscale.training.train import add_train_parser

    add_train_parser(sub)
    from rlscale.training.sweep import add_sweep_parser

    add_sweep_parser(sub)
    from rlscale.training.promote import add_promote_parser

    add_promote_parser(sub)
    sub.add_parser("scenarios", help="list the shipped scenarios")
    from rlscale.datafetch import add_data_parser

    add_data_parser(sub)
    return parser


def _parse_replicas(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ScenarioError(f"--replicas expects POOL=N with N a whole number, got {item!r}")
        out[name.strip()] = int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "simulate":
            from rlscale.envs.run import simulate_static

            summary = simulate_static(
                args.scenario,
                replicas=_parse_replicas(args.replicas),
                hours=args.hours,
                start_step=args.start_step,
                seed=args.seed,
                out_dir=args.out,
                plot=not args.no_plot,
            )
            print(json.dumps(summary["totals"]))
        elif args.command == "calibrate":
            from rlscale.envs.calibrate import run_calibrate

            result = run_calibrate(args.data, args.out)
            print(json.dumps({"all_pass": result["all_pass"], "files": result["files"]}))
            return 0 if result["all_pass"] else 1
        elif args.command == "bench" and args.bench_target == "serve":
            from rlscale.serving.bench import run_bench_serve

            return run_bench_serve(args)
        elif args.command == "bench" and args.bench_target == "evaluate":
            from rlscale.experiments.bench_evaluate import run_bench_evaluate

            return run_bench_evaluate(args)
        elif args.command == "bench" and args.bench_target == "train":
            from rlscale.training.bench import THREAD_SETTINGS, bench_train
            from rlscale.training.config import TRAIN_SCENARIO, TrainConfig, load_config_file

            threads = tuple(x for x in args.threads.split(",") if x)
            if not threads or set(threads) - set(THREAD_SETTINGS):
                raise ScenarioError(f"--threads takes {THREAD_SETTINGS}, got {args.threads!r}")
            scenario = args.scenario or TRAIN_SCENARIO
            values = load_config_file(args.config) if args.config else {}
            config = TrainConfig.from_dict({**values, "scenario": scenario})
            result = bench_train(
                scenario, rollouts=args.rollouts, threads=threads, config=config, policy=args.policy
            )
            print(json.dumps(result))
        elif args.command == "bench":
            from rlscale.envs.bench import bench_env
            from rlscale.envs.env import DEFAULT_SCENARIO

            result = bench_env(
                args.scenario or DEFAULT_SCENARIO,
                episode_scenario=args.episode_scenario,
                sizes=[int(x) for x in args.sizes.split(",") if x],
                sync_sizes=[int(x) for x in args.sync_sizes.split(",") if x],
                seconds=args.seconds,
            )
            print(json.dumps(result))
        elif args.command == "tune-baseline":
            return run_tune(args)
        elif args.command == "evaluate":
            from rlscale.experiments.evaluate import run_evaluate

            return run_evaluate(args)
        elif args.command == "serve":
            from rlscale.serving.cli import run_serve

            return run_serve(args)
        elif args.command == "shadow-report":
            from rlscale.serving.shadow_report import run_shadow_report

            return run_shadow_report(args)
        elif args.command == "cost-report":
            from rlscale.serving.shadow_cost import run_cost_report

            return run_cost_report(args)
        elif args.command == "train":
            from rlscale.training.train import run_train

            return run_train(args)
        elif args.command == "sweep":
            from rlscale.training.sweep import run_sweep

            return run_sweep(args)
        elif args.command == "export-policy":
            from rlscale.training.export import run_export

            return run_export(args)
        elif args.command == "register-policy":
            from rlscale.training.export import run_register

            return run_register(args)
        elif args.command == "promote":
            from rlscale.training.promote import run_promote

            return run_promote(args)
        elif args.command == "data":
            from rlscale.datafetch import run_data

            return run_data(args)
        elif args.command == "scenarios":
            from rlscale.envs.scenario import list_scenarios, load_scenario

            for name in list_scenarios():
                print(f"{name:20s} {load_scenario(name).description}")
    except ScenarioError as err:
        print(f"rlscale: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
