"""The ``rlscale`` command line: one program, one subcommand per job.

Subcommands:
    simulate     simulate a scenario under a fixed scaler; print the result and plot it
    calibrate    fit throughput profiles from measured vLLM data (experiments/profiles/)
    bench env    measure simulator speed; the last line printed is one JSON object
    scenarios    list the scenarios that ship with the project
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
    e.add_argument("--scenario", default="synthetic-2week")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rlscale``."""
    parser = argparse.ArgumentParser(
        prog="rlscale", description="A reinforcement-learning autoscaler for GPU inference."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_simulate(sub)
    _add_calibrate(sub)
    _add_bench(sub)
    sub.add_parser("scenarios", help="list the shipped scenarios")
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
        elif args.command == "bench":
            from rlscale.envs.bench import bench_env

            result = bench_env(
                args.scenario,
                sizes=[int(x) for x in args.sizes.split(",") if x],
                sync_sizes=[int(x) for x in args.sync_sizes.split(",") if x],
                seconds=args.seconds,
            )
            print(json.dumps(result))
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
