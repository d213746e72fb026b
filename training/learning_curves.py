"""Learning curves: validation cost and SLO attainment against training steps, for one run or
several (training seeds) side by side, each run's exported policy starred.

Every ``rlscale train`` run draws its own (``learning_curves.png`` in its run folder). To put
several runs on one figure, from their run folders' ``training_report.json``::

    python -m rlscale.training.learning_curves runs/RUN_0 runs/RUN_1 runs/RUN_2 \\
        --out experiments/training_servegen.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlscale.training.validate import ValidationResult

REPORT_FILE = "training_report.json"
"""The run folder's training report (written by ``rlscale train`` at the end of a run)."""


@dataclass(frozen=True)
class Curve:
    """One run's validations and the step count of the policy it exported (None: unknown)."""

    label: str
    validations: list[ValidationResult]
    exported_timesteps: int | None = None


def read_report(run: Path) -> tuple[Curve, str, float]:
    """A run folder's (or report file's) curve, scenario and attainment target.

    :raises ValueError: no report there, or one that is not a training report.
    """
    path = run / REPORT_FILE if run.is_dir() else run
    if not path.is_file():
        raise ValueError(f"{run}: no {REPORT_FILE} (a finished `rlscale train` run folder?)")
    try:
        report = json.loads(path.read_text())
        validations = [ValidationResult(**v) for v in report["validations"]]
        target = float(report["target_attainment"])
        scenario = str(report["scenario"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable training report ({err})") from err
    exported = (report.get("exported") or {}).get("timesteps")
    seed = (report.get("config") or {}).get("seed")
    label = f"seed {seed}" if seed is not None else str(report.get("run_id", run))[:8]
    curve = Curve(label, validations, None if exported is None else int(exported))
    return curve, scenario, target


def plot_learning_curves(
    curves: Sequence[Curve], target: float, path: Path, *, title: str = ""
) -> Path | None:
    """Validation cost (top) and mean attainment (bottom) against training steps, a line per
    run, its exported policy starred; the worst window's attainment dotted when there is one
    run. None when no run has a validation."""
    curves = [c for c in curves if c.validations]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for c in curves:
        steps = [v.timesteps for v in c.validations]
        (line,) = ax1.plot(steps, [v.cost_usd for v in c.validations], marker="o", lw=1)
        label = c.label if len(curves) > 1 else "mean"
        ax2.plot(
            steps,
            [v.slo_attainment for v in c.validations],
            marker="o",
            lw=1,
            color=line.get_color(),
            label=label,
        )
        if len(curves) == 1:
            ax2.plot(
                steps,
                [v.min_attainment for v in c.validations],
                lw=0.8,
                ls=":",
                label="worst window",
            )
        chosen = [v for v in c.validations if v.timesteps == c.exported_timesteps]
        if chosen:
            ax1.plot(
                [chosen[0].timesteps],
                [chosen[0].cost_usd],
                marker="*",
                ms=14,
                color=line.get_color(),
                markeredgecolor="black",
                ls="none",
                label=f"{c.label}: exported" if len(curves) > 1 else "exported",
            )
    ax1.set_ylabel("validation cost per episode (USD)")
    ax1.set_title(f"{title}: learning curves on validation windows".lstrip(": "))
    if any(c.exported_timesteps is not None for c in curves):
        ax1.legend(loc="upper right", fontsize="small")
    ax2.axhline(target, color="tab:red", ls="--", lw=0.8, label="target")
    ax2.set_ylabel("SLO attainment")
    ax2.set_xlabel("training env steps")
    ax2.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlscale.training.learning_curves",
        description="Learning curves of several training runs on one figure.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or training reports)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default=None, help="title (default: the runs' scenario)")
    args = parser.parse_args(argv)
    try:
        read = [read_report(r) for r in args.runs]
        scenarios = {s for _, s, _ in read}
        targets = {t for _, _, t in read}
        if len(targets) > 1:
            raise ValueError(f"the runs' attainment targets differ ({sorted(targets)})")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    title = args.title if args.title is not None else ", ".join(sorted(scenarios))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if plot_learning_curves([c for c, _, _ in read], targets.pop(), args.out, title=title) is None:
        print("error: none of the runs has a validation", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
