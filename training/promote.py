"""The promotion gate: ``champion`` moves to the ``challenger`` only when the evidence says so.

``rlscale promote`` evaluates the registered model's ``challenger`` version, its ``champion``
version (when there is one) and the baselines on the scenario's HELD-OUT windows
(:func:`rlscale.experiments.evaluate.evaluate`) over several seeds, then decides with
:func:`decide`:

* **Cost.** For each incumbent (the champion, and the best baseline) the challenger's cost is
  compared episode by episode: every policy runs the same (window, seed) cells with the same
  random stream, so ``d = cost(challenger) - cost(incumbent)`` per cell is a paired
  difference, and the cluster's randomness largely cancels in it. The challenger beats the
  incumbent when the upper end of the two-sided 95% t-interval of the mean of ``d`` is below
  zero (it is cheaper, and not by chance). Both incumbents must be beaten; requiring every one
  of several tests to pass (an intersection-union test) keeps the 95% level without a
  multiplicity correction.
* **SLO.** The challenger's attainment must meet the scenario's target: the lower end of the
  two-sided 95% t-interval of its mean per-episode attainment over the same cells must be at
  or above ``scenario.slo.target_attainment``. A point estimate at the target is not enough,
  and neither is a mean above it whose interval reaches below: the gate is conservative, a
  wrongly refused challenger costs a rerun with more seeds, a wrongly promoted one costs SLO
  violations in production. A zero-width interval (every episode the same) is its value.
* **Best baseline.** Among the tuned baselines (``out/tuning/<scenario>/<policy>.json``,
  written by ``rlscale tune-baseline``), else every baseline with its defaults (the report says
  which), the cheapest whose mean attainment meets the target, else the one with the highest
  attainment (:func:`rlscale.experiments.report.best_baseline`). It is chosen on the same
  held-out episodes, after seeing them: that favours the baseline, which is the conservative
  side. Baselines that cannot run the scenario (``spot_aware`` without a spot pool) are left
  out and named.
* Fewer than two cells give no interval: the gate refuses.

Then it writes ``promotion.json`` and ``promotion.md`` (the table and the verdict, see
:mod:`rlscale.training.promotion_report`) and the evaluation's ``results.json`` and
``report.html`` to ``--out``, logs an MLflow run in the experiment ``rlscale-policies`` with
the metrics and those files, moves ``champion`` (not with ``--dry-run``) and tags the
challenger's version with the verdict (``promotion.verdict``, ``promotion.reason``,
``promotion.run_id``). A service started with ``--policy models:/NAME@champion`` then
hot-reloads the promoted version.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlscale.agents.tuning import tuning_dir as default_tuning_dir
from rlscale.envs.scenario import ScenarioError, load_scenario
from rlscale.experiments.grid import baseline_specs
from rlscale.training.model_registry import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    DEFAULT_MODEL_NAME,
)
from rlscale.training.promotion_report import (
    build_report,
    format_interval,
    format_pct,
    format_usd,
    log_promotion,
    render_markdown,
    write_text,
)

CHAMPION_ROLE = "champion"
BASELINE_ROLE = "best baseline"


class PromotionError(RuntimeError):
    """The gate could not decide: no challenger, a registry away, policies that do not fit."""


# --- the decision --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """The challenger against one incumbent, over paired (window, seed) cells."""

    incumbent: str
    role: str
    cells: int
    cost_diff_usd: dict[str, Any]
    """Mean and 95% CI of challenger cost minus incumbent cost, per cell."""
    cheaper: bool


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` concluded, and why."""

    promote: bool
    reason: str
    """One line: why it promotes, or the first reason it refuses."""
    reasons: list[str]
    """Every failed condition (empty when it promotes)."""
    target_attainment: float
    attainment: dict[str, Any]
    """Mean and 95% CI of the challenger's per-episode attainment."""
    comparisons: list[Comparison] = field(default_factory=list)


def paired(
    episodes: list[dict[str, Any]], first: str, second: str, metric: str
) -> list[tuple[float, float]]:
    """``(first's, second's)`` value of ``metric`` per (seed, start step) that both ran.

    :raises PromotionError: the two did not run the same cells (no pairing is possible).
    """
    cells: dict[str, dict[tuple[int, int], float]] = {first: {}, second: {}}
    for row in episodes:
        if row["policy"] in cells:
            cells[row["policy"]][(int(row["seed"]), int(row["start_step"]))] = float(row[metric])
    if set(cells[first]) != set(cells[second]):
        raise PromotionError(f"{first} and {second} did not run the same (window, seed) cells")
    return [(cells[first][k], cells[second][k]) for k in sorted(cells[first])]


def _upper(agg: dict[str, Any]) -> float:
    high = agg["ci95"][1]
    return math.inf if high is None else float(high)


def _lower(agg: dict[str, Any]) -> float:
    low = agg["ci95"][0]
    return -math.inf if low is None else float(low)


def decide(
    episodes: list[dict[str, Any]],
    challenger: str,
    incumbents: dict[str, str],
    target_attainment: float,
) -> Decision:
    """Promote ``challenger`` or not, from an evaluation's per-episode rows.

    :param episodes: :attr:`rlscale.experiments.evaluate.Evaluation.episodes`.
    :param challenger: the challenger's label in them.
    :param incumbents: label -> role (``champion``, ``best baseline``) of what it must beat.
    :param target_attainment: the scenario's SLO attainment target.

    See the module docstring for the rule; it is applied here and nowhere else.
    """
    from rlscale.experiments.results import mean_ci95

    own = [float(r["slo_attainment"]) for r in episodes if r["policy"] == challenger]
    attainment = mean_ci95(own)
    reasons: list[str] = []
    comparisons = []
    for label, role in incumbents.items():
        pairs = paired(episodes, challenger, label, "cost_usd")
        diff = mean_ci95([c - i for c, i in pairs])
        cheaper = _upper(diff) < 0.0
        comparisons.append(Comparison(label, role, len(pairs), diff, cheaper))
        if not cheaper:
            reasons.append(
                f"not cheaper than the {role} {label}: challenger - {role} = "
                f"{format_usd(diff['mean'])} USD per episode, 95% CI "
                f"{format_interval(diff, format_usd)} (its upper end must be below 0)"
            )
    if len(own) < 2:
        reasons.append(
            f"{len(own)} episode(s) give no confidence interval: use more seeds or windows"
        )
    elif _lower(attainment) < target_attainment:
        reasons.append(
            f"SLO attainment {format_pct(attainment['mean'])}, 95% CI "
            f"{format_interval(attainment, format_pct)}: its lower end is below the "
            f"{format_pct(target_attainment)} target"
        )
    if reasons:
        return Decision(False, reasons[0], reasons, target_attainment, attainment, comparisons)
    beaten = ", ".join(
        f"the {c.role} {c.incumbent} by {format_usd(-c.cost_diff_usd['mean'])} USD per episode "
        f"(95% CI of the saving {format_usd(-_upper(c.cost_diff_usd))} to "
        f"{format_usd(-_lower(c.cost_diff_usd))})"
        for c in comparisons
    )
    reason = (
        f"cheaper than {beaten}, with SLO attainment {format_pct(attainment['mean'])} "
        f"(95% CI lower end {format_pct(_lower(attainment))} >= "
        f"{format_pct(target_attainment)} target)"
    )
    return Decision(True, reason, [], target_attainment, attainment, comparisons)


# --- what is compared ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A registered version under an alias, fetched into a local folder."""

    alias: str
    version: str
    label: str
    folder: Path
    run_id: str | None
    scenario: str | None
    """The scenario its manifest records (``training.scenario``)."""
    pools: list[tuple[str, str]]
    """(name, purchase) of each pool it was trained on."""


def _registry_call(what: str, uri: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(...)``, with an unreachable or refusing registry as a :class:`PromotionError`."""
    from mlflow.exceptions import MlflowException

    try:
        return call(*args, **kwargs)
    except MlflowException as err:
        raise PromotionError(f"{what} at {uri}: {err.message}") from None
    except OSError as err:
        raise PromotionError(f"{what} at {uri}: {err}") from None


def _alias_version(client: Any, uri: str, name: str, alias: str) -> str | None:
    """The version ``alias`` names, None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise PromotionError(f"reading alias {alias!r} of {name} at {uri}: {err.message}") from None


def _fetch(client: Any, uri: str, name: str, alias: str, version: str, dst: Path) -> Candidate:
    from rlscale.agents.onnx_policy import ArtifactError, read_manifest
    from rlscale.training.model_registry import fetch_policy

    spec = f"models:/{name}/{version}"
    try:
        fetched = _registry_call(f"fetching {spec}", uri, fetch_policy, spec, dst, client=client)
        manifest = read_manifest(fetched.folder)
    except ArtifactError as err:
        raise PromotionError(f"{spec} ({alias}): {err}") from None
    return Candidate(
        alias=alias,
        version=version,
        label=f"ppo[{name}@{alias}=v{version}]",
        folder=fetched.folder,
        run_id=fetched.run_id,
        scenario=manifest.training.get("scenario"),
        pools=[(p.name, p.purchase) for p in manifest.pools],
    )


def _candidates(
    client: Any, uri: str, name: str, out_dir: str | Path | None
) -> tuple[Candidate, Candidate | None, Path]:
    """The challenger and the champion (None: no champion yet) fetched under the output
    folder (default ``out/promote/<name>-v<challenger>``), and that folder."""
    _registry_call(f"registered model {name!r}", uri, client.get_registered_model, name)
    challenger_version = _alias_version(client, uri, name, CHALLENGER_ALIAS)
    if challenger_version is None:
        raise PromotionError(
            f"{name} has no {CHALLENGER_ALIAS!r} alias at {uri}: register one with "
            f"rlscale register-policy FOLDER --name {name} --alias {CHALLENGER_ALIAS}"
        )
    champion_version = _alias_version(client, uri, name, CHAMPION_ALIAS)
    if champion_version == challenger_version:
        raise PromotionError(
            f"{name} v{challenger_version} is both {CHALLENGER_ALIAS} and {CHAMPION_ALIAS} "
            "(already promoted): register a new challenger first"
        )
    out = Path(out_dir or Path("out/promote") / f"{name}-v{challenger_version}")
    challenger = _fetch(
        client, uri, name, CHALLENGER_ALIAS, challenger_version, out / "policies" / "challenger"
    )
    champion = None
    if champion_version is not None:
        champion = _fetch(
            client, uri, name, CHAMPION_ALIAS, champion_version, out / "policies" / "champion"
        )
    return challenger, champion, out


def _scenario_for(requested: str | None, challenger: Candidate, champion: Candidate | None) -> Any:
    """The scenario to evaluate on: ``requested``, else the challenger's training scenario."""
    if champion is not None and champion.pools != challenger.pools:
        raise PromotionError(
            f"the challenger v{challenger.version} and the champion v{champion.version} were "
            f"trained on different pools ({challenger.pools} vs {champion.pools}, scenarios "
            f"{challenger.scenario!r} and {champion.scenario!r}): they cannot be compared on "
            "one cluster"
        )
    name = requested or challenger.scenario
    if not name:
        raise PromotionError(
            f"the challenger v{challenger.version}'s manifest records no training.scenario; "
            "pass --scenario"
        )
    try:
        scenario = load_scenario(name)
    except ScenarioError as err:
        how = "" if requested else " (from the challenger's manifest; pass --scenario)"
        raise PromotionError(f"scenario {name!r}{how}: {err}") from None
    pools = [(p.name, p.purchase) for p in scenario.pools]
    if pools != challenger.pools:
        raise PromotionError(
            f"scenario {scenario.name} has pools {pools}, the challenger v{challenger.version} "
            f"was trained on {challenger.pools}"
        )
    return scenario


# --- the gate ------------------------------------------------------------------------------------


@dataclass
class Promotion:
    """What :func:`promote` did: the decision, the report, and where things went."""

    decision: Decision
    report: dict[str, Any]
    out_dir: Path
    moved: bool
    run_id: str | None = None
    markdown: str = ""


def promote(
    name: str = DEFAULT_MODEL_NAME,
    *,
    scenario: str | None = None,
    seeds: int = 5,
    max_windows: int | None = None,
    tracking_uri: str | None = None,
    out_dir: str | Path | None = None,
    tuning_dir: str | Path | None = None,
    dry_run: bool = False,
    log_mlflow: bool = True,
    progress: bool = False,
) -> Promotion:
    """Evaluate ``challenger`` against ``champion`` and the best baseline; move ``champion``
    when :func:`decide` says so.

    :param name: the registered model.
    :param scenario: shipped name or YAML path; default the challenger's training scenario.
    :param seeds: seeds ``0..N-1``; every seed runs every held-out window.
    :param max_windows: only the first this many held-out windows.
    :param tracking_uri: the MLflow store (default ``$MLFLOW_TRACKING_URI``, else
        ``sqlite:///mlflow.db``).
    :param out_dir: where the report goes (default ``out/promote/<name>-v<challenger>``).
    :param tuning_dir: the tuned baselines (default ``out/tuning/<scenario>``).
    :param dry_run: decide, write and log, but move no alias and tag no version.
    :param log_mlflow: log the run (with ``dry_run``, the only write to the store).
    :raises PromotionError: no challenger, an unreachable store, policies or a scenario that do
        not fit, or a champion moved by someone else while this ran.
    """
    from rlscale.common.tracking import TrackingError
    from rlscale.common.tracking import tracking_uri as default_uri
    from rlscale.experiments.evaluate import evaluate
    from rlscale.experiments.grid import PolicySpec
    from rlscale.experiments.report import best_baseline, write_report
    from rlscale.experiments.results import write_results
    from rlscale.training.model_registry import registry_client

    if seeds < 1:
        raise PromotionError(f"--seeds must be at least 1, got {seeds}")
    uri = default_uri(tracking_uri)
    client = registry_client(uri)
    challenger, champion, out = _candidates(client, uri, name, out_dir)
    sc = _scenario_for(scenario, challenger, champion)
    try:
        baselines, baseline_note = baseline_specs(
            sc, Path(tuning_dir) if tuning_dir else default_tuning_dir(sc.name)
        )
    except ScenarioError as err:
        raise PromotionError(str(err)) from None
    candidates = [c for c in (challenger, champion) if c is not None]
    specs = [PolicySpec("onnx", {"artifact": str(c.folder)}, label=c.label) for c in candidates]
    try:
        ev = evaluate(
            sc,
            specs + baselines,
            seeds=seeds,
            max_windows=max_windows,
            include_oracle=False,
            progress=progress,
        )
    except ScenarioError as err:
        raise PromotionError(str(err)) from None
    best, best_note = best_baseline(ev.results)
    incumbents = {champion.label: CHAMPION_ROLE} if champion else {}
    if best is not None:
        incumbents[best] = BASELINE_ROLE
    decision = decide(ev.episodes, challenger.label, incumbents, sc.slo.target_attainment)

    report = build_report(
        name,
        sc,
        ev.results,
        decision,
        challenger,
        champion,
        dry_run,
        baselines={"compared": [s.display for s in baselines], "note": baseline_note},
        best_baseline={"label": best, "chosen_as": best_note},
    )
    markdown = render_markdown(report)
    out.mkdir(parents=True, exist_ok=True)
    files = [
        write_results(ev, out),
        write_report(ev, out),
        write_text(out / "promotion.json", json.dumps(report, indent=2, allow_nan=False) + "\n"),
        write_text(out / "promotion.md", markdown),
    ]
    result = Promotion(decision, report, out, moved=False, markdown=markdown)
    if log_mlflow:
        try:
            result.run_id = log_promotion(report, files, uri, sc.name, seeds)
        except TrackingError as err:
            raise PromotionError(str(err)) from None
    if not dry_run:
        result.moved = _apply(client, uri, name, challenger, champion, decision, result.run_id)
    return result


def _apply(
    client: Any,
    uri: str,
    name: str,
    challenger: Candidate,
    champion: Candidate | None,
    decision: Decision,
    run_id: str | None,
) -> bool:
    """Move ``champion`` (when promoted) and tag the challenger's version with the verdict."""
    moved = False
    if decision.promote:
        now = _alias_version(client, uri, name, CHAMPION_ALIAS)
        was = champion.version if champion else None
        if now != was:
            raise PromotionError(
                f"{CHAMPION_ALIAS} of {name} moved from {was} to {now} while the gate ran; "
                "nothing was changed, run it again"
            )
        _registry_call(
            f"moving {CHAMPION_ALIAS} of {name} to v{challenger.version}",
            uri,
            client.set_registered_model_alias,
            name,
            CHAMPION_ALIAS,
            challenger.version,
        )
        moved = True
    tags = {
        "promotion.verdict": "promoted" if decision.promote else "refused",
        "promotion.reason": decision.reason[:5000],
        "promotion.run_id": run_id or "",
    }
    for key, value in tags.items():
        _registry_call(
            f"tagging {name} v{challenger.version}",
            uri,
            client.set_model_version_tag,
            name,
            challenger.version,
            key,
            value,
        )
    return moved


# --- command line --------------------------------------------------------------------------------


def add_promote_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``promote`` subcommand."""
    p = sub.add_parser(
        "promote",
        help="move the champion alias to the challenger only if it is cheaper and meets the SLO",
        description=(
            "Evaluate the registered model's challenger against its champion (if any) and the "
            "best tuned baseline on held-out windows over several seeds; move champion to the "
            "challenger only when the 95% CI of the paired cost difference lies below 0 for "
            "both and the lower end of the 95% CI of its SLO attainment meets the target. "
            "Writes promotion.json/.md, results.json and report.html, logs an MLflow run "
            "(experiment rlscale-policies) and tags the challenger's version with the verdict."
        ),
    )
    p.add_argument("--name", default=DEFAULT_MODEL_NAME, help=f"default {DEFAULT_MODEL_NAME}")
    p.add_argument("--scenario", default=None, help="default: the challenger's training scenario")
    p.add_argument("--seeds", type=int, default=5, help="run seeds 0..N-1 (default 5)")
    p.add_argument(
        "--max-windows", type=int, default=None, help="use only the first N held-out windows"
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    )
    p.add_argument(
        "--tuning-dir",
        type=Path,
        default=None,
        help="the tuned baselines (default out/tuning/<scenario>)",
    )
    p.add_argument("--out", type=Path, default=None, help="default out/promote/<name>-v<N>")
    p.add_argument(
        "--dry-run", action="store_true", help="decide and report, move no alias, tag nothing"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def run_promote(args: argparse.Namespace) -> int:
    """``rlscale promote``: prints the table, the verdict, then one JSON line of what was done.

    :returns: 0 when the gate decided (promoted or refused); 2 when it could not.
    """
    from rlscale.common.tracking import TrackingError, require_mlflow

    try:
        require_mlflow()
        result = promote(
            args.name,
            scenario=args.scenario,
            seeds=args.seeds,
            max_windows=args.max_windows,
            tracking_uri=args.tracking_uri,
            out_dir=args.out,
            tuning_dir=args.tuning_dir,
            dry_run=args.dry_run,
            progress=not args.no_progress,
        )
    except (PromotionError, TrackingError, ScenarioError) as err:
        print(f"rlscale promote: {err}", file=sys.stderr)
        return 2
    print(result.markdown)
    print(
        json.dumps(
            {
                "verdict": result.report["verdict"],
                "moved": result.moved,
                "challenger_version": result.report["challenger"]["version"],
                "report": str(result.out_dir / "promotion.md"),
                "mlflow_run_id": result.run_id,
            }
        )
    )
    return 0
