"""The promotion gate's report: ``promotion.json``, ``promotion.md``, and its MLflow run.

:func:`build_report` turns a :class:`~rlscale.training.promote.Decision` and the evaluation's
results into the JSON report; :func:`render_markdown` prints it as the table and the verdict;
:func:`log_promotion` logs it as a run of the experiment ``rlscale-policies``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlscale.training.export import POLICY_EXPERIMENT

if TYPE_CHECKING:
    from rlscale.envs.scenario import Scenario
    from rlscale.experiments.results import Results
    from rlscale.training.promote import Candidate, Decision

RULE = (
    "promote when, over paired (window, seed) cells, the upper end of the 95% CI "
    "of (challenger cost - incumbent cost) is below 0 for the champion and the best "
    "baseline, and the lower end of the 95% CI of the challenger's mean "
    "per-episode SLO attainment is at or above the target"
)


def format_usd(value: float | None) -> str:
    """A signed amount in USD with cents; ``n/a`` when missing."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.2f}"


def format_pct(value: float | None) -> str:
    """A share as a percentage with two decimals; ``n/a`` when missing."""
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def format_interval(agg: dict[str, Any], fmt: Any) -> str:
    """``[low, high]`` of a :func:`~rlscale.experiments.evaluate.mean_ci95` result."""
    low, high = agg["ci95"]
    return "n/a (one value)" if low is None else f"[{fmt(low)}, {fmt(high)}]"


def build_report(
    name: str,
    sc: Scenario,
    results: Results,
    decision: Decision,
    challenger: Candidate,
    champion: Candidate | None,
    dry_run: bool,
    *,
    baselines: dict[str, Any],
    best_baseline: dict[str, Any],
) -> dict[str, Any]:
    """What ``promotion.json`` holds: the verdict and its reasons, who was compared on which
    windows and seeds, the paired differences, and each policy's cost and attainment.

    :param baselines: ``{"compared": [labels], "note": how they were chosen}``.
    :param best_baseline: ``{"label": ..., "chosen_as": ...}``.
    """
    from rlscale.experiments.results import json_safe

    def candidate(c: Candidate | None) -> dict[str, Any] | None:
        if c is None:
            return None
        return {
            "label": c.label,
            "version": c.version,
            "run_id": c.run_id,
            "training_scenario": c.scenario,
            "folder": str(c.folder),
        }

    return json_safe(
        {
            "registered_model": name,
            "verdict": _verdict(decision, dry_run),
            "promote": decision.promote,
            "dry_run": dry_run,
            "reason": decision.reason,
            "reasons": decision.reasons,
            "scenario": sc.name,
            "target_attainment": decision.target_attainment,
            "seeds": results.seeds,
            "held_out_windows": results.held_out.test_starts,
            "challenger": candidate(challenger),
            "champion": candidate(champion),
            "challenger_attainment": decision.attainment,
            "baselines": baselines,
            "best_baseline": best_baseline,
            "comparisons": [asdict(c) for c in decision.comparisons],
            "policies": {
                label: {k: m[k].to_json() for k in ("cost_usd", "slo_attainment") if k in m}
                for label, m in results.policies.items()
            },
            "rule": RULE,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )


def _verdict(decision: Decision, dry_run: bool) -> str:
    if decision.promote:
        return "would promote (dry run)" if dry_run else "promoted"
    return "refused"


def verdict_line(report: dict[str, Any]) -> str:
    """One line: what happened and why."""
    ch = report["challenger"]
    return f"{report['verdict'].upper()} {ch['label']}: {report['reason']}"


def render_markdown(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table, then the verdict and how the baselines were chosen."""
    roles = {report["challenger"]["label"]: "challenger"}
    diffs = {}
    for c in report["comparisons"]:
        roles[c["incumbent"]] = c["role"]
        diffs[c["incumbent"]] = c["cost_diff_usd"]
    lines = [
        f"Promotion of {report['registered_model']} on {report['scenario']} held-out windows "
        f"{report['held_out_windows']}, seeds {report['seeds']}; SLO target "
        f"{format_pct(report['target_attainment'])}.",
        "",
        "| policy | role | cost (USD) | SLO attainment | challenger - it, paired (USD) |",
        "|---|---|---:|---:|---:|",
    ]
    for label, m in report["policies"].items():
        cost, att = m["cost_usd"], m["slo_attainment"]
        diff = diffs.get(label)
        paired_text = (
            f"{format_usd(diff['mean'])} {format_interval(diff, format_usd)}"
            if diff is not None
            else ""
        )
        lines.append(
            f"| {label} | {roles.get(label, '')} "
            f"| {cost['mean']:.2f} {format_interval(cost, _plain)} "
            f"| {format_pct(att['mean'])} {format_interval(att, format_pct)} | {paired_text} |"
        )
    att = report["challenger_attainment"]
    lines += [
        "",
        "Intervals: 95% CI (cost and attainment over seeds; paired differences over "
        "(window, seed) cells).",
        f"The challenger's attainment over the (window, seed) cells, as the decision reads it: "
        f"{format_pct(att['mean'])} {format_interval(att, format_pct)}.",
        f"Baselines: {report['baselines']['note']}. Best: {report['best_baseline']['label']} "
        f"({report['best_baseline']['chosen_as']}).",
        "",
        verdict_line(report),
        "",
    ]
    return "\n".join(lines)


def _plain(value: float) -> str:
    return f"{value:.2f}"


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (UTF-8); returns the path."""
    path.write_text(text, encoding="utf-8")
    return path


def log_promotion(
    report: dict[str, Any], files: list[Path], uri: str, scenario: str, seeds: int
) -> str:
    from rlscale.common.tracking import log_run, metric_key

    metrics: dict[str, float] = {"promote/promoted": float(report["promote"])}
    for label, m in report["policies"].items():
        for key, agg in m.items():
            if agg.get("mean") is not None:
                metrics[metric_key(label, key)] = float(agg["mean"])
    att = report["challenger_attainment"]
    for end, value in zip(("low", "high"), att["ci95"], strict=True):
        if value is not None:
            metrics[f"promote/challenger_attainment_ci95_{end}"] = float(value)
    for c in report["comparisons"]:
        role = c["role"].replace(" ", "_")
        metrics[f"promote/cost_diff_vs_{role}_usd"] = float(c["cost_diff_usd"]["mean"])
        for end, value in zip(("low", "high"), c["cost_diff_usd"]["ci95"], strict=True):
            if value is not None:
                metrics[f"promote/cost_diff_vs_{role}_usd_ci95_{end}"] = float(value)
    champion = report["champion"]
    params = {
        "registered_model": report["registered_model"],
        "scenario": scenario,
        "seeds": json.dumps(report["seeds"]),
        "held_out_windows": json.dumps(report["held_out_windows"]),
        "challenger_version": report["challenger"]["version"],
        "champion_version": champion["version"] if champion else "none",
        "best_baseline": str(report["best_baseline"]["label"]),
        "verdict": report["verdict"],
        "dry_run": str(report["dry_run"]),
    }
    run = log_run(
        experiment=POLICY_EXPERIMENT,
        run_name=f"{scenario}__promote__{seeds}__{int(time.time())}",
        command="promote",
        params=params,
        metrics=metrics,
        artifacts=files,
        uri=uri,
    )
    return run.run_id
