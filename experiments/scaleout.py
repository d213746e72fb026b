"""How long an evaluation grid takes on N workers: a list-scheduling model of the backends.

:func:`makespan` places tasks as the backends do (:mod:`rlscale.common.backends` submits the
long oracle solves first; a free worker takes the next task): longest task first onto the
least-loaded worker (LPT), each task lengthened by the backend's per-task overhead, after a
fixed start-up (a Ray cluster's start, a worker's imports and setup). :func:`scaleout` applies
it to a measured grid repeated ``k`` times (k times as many windows or seeds), so per-task
times measured on one machine say how long a larger grid takes on a larger cluster.

``python -m rlscale.experiments.scaleout BENCH.json --out scaleout.png`` draws the figure from
the JSON of ``rlscale bench evaluate`` (its per-task CPU times and Ray's measured costs) and
prints the table behind it as JSON on its last line.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_WORKERS = (1, 2, 8, 64)
DEFAULT_REPEATS = (1, 2, 4, 8, 16, 32, 64, 128)


def makespan(
    durations: Sequence[float],
    workers: int,
    *,
    startup_s: float = 0.0,
    per_task_s: float = 0.0,
) -> float:
    """Wall seconds to run ``durations`` on ``workers`` workers: longest first, each onto the
    worker that frees up first, each task costing ``per_task_s`` more, after ``startup_s``.

    :raises ValueError: no worker, or a negative duration or overhead.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if startup_s < 0 or per_task_s < 0:
        raise ValueError(f"overheads must be >= 0, got {startup_s=} {per_task_s=}")
    if any(d < 0 for d in durations):
        raise ValueError("task durations must be >= 0")
    loads = [0.0] * min(workers, max(len(durations), 1))
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + d + per_task_s)
    return startup_s + max(loads)


def scaleout(
    task_s: Sequence[float],
    *,
    workers: Sequence[int] = DEFAULT_WORKERS,
    repeats: Sequence[int] = DEFAULT_REPEATS,
    startup_s: float = 0.0,
    per_task_s: float = 0.0,
) -> dict[str, Any]:
    """Modelled wall time of the grid ``task_s`` repeated ``k`` times, for each worker count.

    :returns: ``{"tasks": [...], "wall_s": {"N": [...]}}``, one entry per repeat ``k``.
    :raises ValueError: an empty grid, or a repeat below 1.
    """
    if not task_s:
        raise ValueError("no task times to model")
    if any(k < 1 for k in repeats):
        raise ValueError(f"repeats must be at least 1, got {list(repeats)}")
    return {
        "tasks": [len(task_s) * k for k in repeats],
        "wall_s": {
            str(n): [
                makespan(list(task_s) * k, n, startup_s=startup_s, per_task_s=per_task_s)
                for k in repeats
            ]
            for n in workers
        },
    }


def model_inputs(bench: dict[str, Any]) -> dict[str, Any]:
    """Per-task seconds, start-up and per-task overhead from ``rlscale bench evaluate``'s JSON:
    the in-process run's per-task CPU times, and Ray's start, worker setup and per-task cost.

    :raises ValueError: a JSON without those (the message names what is missing).
    """
    try:
        tasks = [t["cpu_s"] for t in bench["configs"]["in_process"]["tasks"]]
        ray = bench["configs"]["ray"]["fixed"]
        startup = ray["ray_start_s"] + ray["worker_setup_s"]
        per_task = ray["per_task_s"]
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"not a bench evaluate JSON with in_process tasks and ray fixed costs: missing {err}"
        ) from None
    return {"task_s": tasks, "startup_s": startup, "per_task_s": per_task}


def plot(table: dict[str, Any], path: Path, title: str) -> Path:
    """Grid size against modelled wall time, one line per worker count, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for n, walls in table["wall_s"].items():
        label = f"{n} worker" + ("" if n == "1" else "s")
        ax.plot(table["tasks"], [w / 60 for w in walls], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("grid size (tasks: episodes and oracle solves)")
    ax.set_ylabel("wall time (minutes)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rlscale.experiments.scaleout",
        description="modelled wall time of larger grids on 1-64 workers, from bench evaluate",
    )
    p.add_argument("bench", type=Path, help="the JSON rlscale bench evaluate wrote (--out)")
    p.add_argument("--out", type=Path, default=Path("scaleout.png"), help="the PNG to write")
    p.add_argument("--workers", default=",".join(map(str, DEFAULT_WORKERS)))
    args = p.parse_args(argv)
    try:
        bench = json.loads(args.bench.read_text())
        inputs = model_inputs(bench)
        workers = [int(x) for x in args.workers.split(",") if x]
        table = scaleout(
            inputs["task_s"],
            workers=workers,
            startup_s=inputs["startup_s"],
            per_task_s=inputs["per_task_s"],
        )
    except (OSError, json.JSONDecodeError, ValueError) as err:
        print(f"scaleout: {err}", file=sys.stderr)
        return 2
    title = (
        f"{bench.get('grid', {}).get('describe', 'measured grid')}, repeated k times\n"
        f"per-task CPU measured in process; Ray start-up {inputs['startup_s']:.1f} s, "
        f"{inputs['per_task_s'] * 1000:.1f} ms per task"
    )
    plot(table, args.out, title)
    line: dict[str, Any] = {"figure": str(args.out), **inputs, "table": table}
    ray = bench["configs"]["ray"]
    if "wall_s" in ray and "workers" in ray:
        # the model against the one grid measured on Ray here
        line["check"] = {
            "ray_workers": ray["workers"],
            "measured_wall_s": ray["wall_s"],
            "modelled_wall_s": makespan(
                inputs["task_s"],
                ray["workers"],
                startup_s=inputs["startup_s"],
                per_task_s=inputs["per_task_s"],
            ),
        }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
