"""``rlscale sweep``: a search over training settings with Ray Tune, tracked in MLflow.

A sweep is ``trials`` full training runs (:func:`rlscale.training.train.train`), each with
settings drawn from :data:`SEARCH_SPACE` on top of one base :class:`TrainConfig` (the flags of
``rlscale train``; a field given as a flag is fixed, not searched). Ray Tune runs them:

- **Search**: Optuna's TPE sampler through Tune (``OptunaSearch``), seeded by ``search_seed``;
  every trial trains with the same ``seed``, so trials differ by their settings only.
- **Early stopping**: asynchronous successive halving (``ASHAScheduler``) on the trial's
  objective at its validations: a trial whose objective is in the worst ``1 - 1/reduction``
  of those that reached the same number of env steps stops there.
- **Objective** (minimized), from each validation (:mod:`rlscale.training.validate`): the
  validation cost per episode (``eval/cost_usd``) when the mean SLO attainment meets the
  scenario's target, else that cost plus a penalty of ``ceiling_usd * (1 + shortfall in
  percentage points)``, where ``ceiling_usd`` is an episode with every pool at its quota at
  its on-demand price (see :func:`objective_usd`): any trial that meets the target ranks
  before any that does not, and among those that miss, the closer the better. A trial's
  reported objective is that of the policy it would export if it stopped now (``select``:
  the cheapest validation that met the target, else the last), so the best trial's export is
  what the ranking saw.
- **Tracking**: one MLflow parent run (tag ``rlscale.command=sweep``) in ``rlscale-train``; each
  trial is an ordinary training run there, with ``mlflow.parentRunId`` set to the parent (the
  MLflow UI nests it). Trials export their policy to their run (``policy/``) without
  registering it; the best finished trial's is then registered as a new version of
  ``model_name`` with ``alias`` (``challenger``), and ``rlscale promote`` decides the rest.
  Stopped trials' runs end ``KILLED`` and carry ``rlscale.sweep.outcome=stopped``.
- **Where**: Tune needs Ray even on one machine: ``--backend local`` starts a local Ray
  cluster of ``--workers`` CPUs, ``--backend ray`` joins ``--address`` or ``$RAY_ADDRESS``
  (else starts one too). A trial takes ``torch_threads`` CPUs.

Output in ``OUT`` (default ``out/sweep/<scenario>/``): ``trials.json`` and ``trials.csv`` (the
final table, also logged to the parent run), ``tune/`` (Tune's own records), and ``runs/``
(the trials' run folders, on the machine each ran on).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlscale.common.backends import Backend, BackendError
from rlscale.envs.scenario import Scenario, ScenarioError, load_scenario, scenario_path
from rlscale.training.config import TrainConfig
from rlscale.training.train import TRAIN_EXPERIMENT
from rlscale.training.validate import ValidationResult

SEARCH_SPACE: dict[str, tuple[str, list[Any]]] = {
    "learning_rate": ("loguniform", [1e-5, 1e-3]),
    "n_steps": ("choice", [64, 128, 256, 512]),
    "batch_size": ("choice", [512, 1024, 2048, 4096]),
    "ent_coef": ("loguniform", [1e-4, 3e-2]),
    "gamma": ("choice", [0.98, 0.99, 0.995, 0.999]),
    "hold_prior": ("uniform", [0.5, 0.95]),
    "attainment_margin": ("uniform", [0.0, 0.006]),
    "lagrange_lr": ("loguniform", [0.05, 0.5]),
}
"""What a sweep searches: a :class:`TrainConfig` field -> (kind, arguments), kind one of
``uniform [low, high]``, ``loguniform [low, high]``, ``choice [values]``. PPO's step size,
rollout length, minibatch, exploration and horizon; the start of the policy (``hold_prior``);
and the SLO constraint's settings (margin over the target, speed of the violation price).
A ``batch_size`` larger than the rollout (``n_envs * n_steps``) is cut to the rollout."""

SWEEP_EXPERIMENT = TRAIN_EXPERIMENT
"""Parent and trials in one experiment: the MLflow UI nests runs within an experiment."""
PARENT_TAG = "mlflow.parentRunId"
OUTCOME_TAG = "rlscale.sweep.outcome"
TRIAL_TAG = "rlscale.sweep.trial"
OBJECTIVE = "objective_usd"
TIME_ATTR = "timesteps"
DEFAULT_REDUCTION = 3
TABLE_FIELDS = (
    "trial",
    "outcome",
    TIME_ATTR,
    OBJECTIVE,
    "cost_usd",
    "slo_attainment",
    "selected_timesteps",
)
"""The first columns of the final table (then the searched settings and the MLflow run):
``timesteps`` trained; the objective, validation cost and attainment of the policy the trial
exports (or would have, when stopped), validated at ``selected_timesteps``."""


def _domain(kind: str, args: list[Any]) -> Any:
    from ray import tune

    makers = {"uniform": tune.uniform, "loguniform": tune.loguniform, "choice": tune.choice}
    return makers[kind](args) if kind == "choice" else makers[kind](*args)


def searched_fields(fixed: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The fields a sweep searches: :data:`SEARCH_SPACE`'s, less those ``fixed`` by flags.

    :raises ScenarioError: every searched field is fixed.
    """
    names = [name for name in SEARCH_SPACE if name not in fixed]
    if not names:
        raise ScenarioError(
            f"every searched setting ({sorted(SEARCH_SPACE)}) is fixed by a flag; "
            "leave at least one to search"
        )
    return names


def ceiling_usd(scenario: Scenario) -> float:
    """One episode with every pool at its quota at its on-demand price (the penalty's unit)."""
    per_h = sum(
        p.quota * p.price_usd_h + p.warm_pool_max * p.warm_holding_usd_h for p in scenario.pools
    )
    return float(per_h * scenario.episode_hours)


def objective_usd(result: ValidationResult, ceiling: float) -> float:
    """A validation's cost if its mean attainment meets the target, else the cost plus
    ``ceiling * (1 + shortfall in percentage points)`` (see the module docstring)."""
    if result.slo_attainment >= result.target:
        return float(result.cost_usd)
    shortfall_pct = 100.0 * (result.target - result.slo_attainment)
    return float(result.cost_usd + ceiling * (1.0 + shortfall_pct))


@dataclass
class TrialSelection:
    """Which validation's policy a trial would export now, as training selects it
    (``select="best"``: the cheapest validation that met the target, else the last)."""

    select: str = "best"
    best: ValidationResult | None = None

    def update(self, result: ValidationResult) -> ValidationResult:
        """Take one validation; the one whose policy the trial would export after it."""
        meets = result.slo_attainment >= result.target
        if meets and (self.best is None or result.cost_usd < self.best.cost_usd):
            self.best = result
        if self.select == "best" and self.best is not None:
            return self.best
        return result


def _trial_config(sample: dict[str, Any], base: dict[str, Any]) -> TrainConfig:
    values = {**base, **sample}
    rollout = int(values["n_envs"]) * int(values["n_steps"])
    values["batch_size"] = min(int(values["batch_size"]), rollout)
    return TrainConfig.from_dict(values, source="sweep trial")


def run_trial(
    sample: dict[str, Any],
    *,
    base: dict[str, Any],
    parent_run_id: str,
    scenario_file: tuple[str, str] | None = None,
) -> None:
    """One Tune trial: a training run of ``base`` with ``sample``'s settings, a child of
    ``parent_run_id``, reporting each validation's objective to Tune.

    :param scenario_file: (file name, YAML text) of a scenario given as a file on the
        driver's machine, written here so that a worker elsewhere reads the same.
    """
    if scenario_file is None:
        _train_trial(_trial_config(sample, base), parent_run_id)
        return
    with tempfile.TemporaryDirectory(prefix="rlscale-sweep-") as folder:
        path = Path(folder) / scenario_file[0]
        path.write_text(scenario_file[1])
        _train_trial(_trial_config(sample, {**base, "scenario": str(path)}), parent_run_id)


def _train_trial(config: TrainConfig, parent_run_id: str) -> None:
    from ray import tune

    from rlscale.training.train import train

    scenario = load_scenario(config.scenario)
    ceiling = ceiling_usd(scenario)
    selection = TrialSelection(config.select)
    final: list[dict[str, Any]] = []

    def report(result: ValidationResult, run_id: str) -> None:
        chosen = selection.update(result)
        metrics = {
            TIME_ATTR: int(result.timesteps),
            OBJECTIVE: objective_usd(chosen, ceiling),
            # of the policy the trial would export, which may be an earlier validation's
            "cost_usd": chosen.cost_usd,
            "slo_attainment": chosen.slo_attainment,
            "selected_timesteps": int(chosen.timesteps),
            "mlflow_run_id": run_id,
            "finished": False,
        }
        if result.timesteps >= config.total_timesteps:
            # the last validation: reported once the export is logged, since the scheduler
            # may end a trial at any report
            final.append(metrics)
        else:
            tune.report(metrics)

    trial_id = tune.get_context().get_trial_id() or ""
    config.run_name = f"{scenario.name}__ppo-trial__{config.seed}__{trial_id}"
    outcome = train(
        config,
        tags={PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id, "rlscale.command": "sweep-trial"},
        on_validation=report,
        register_version=False,
    )
    if not final:
        raise RuntimeError(f"trial {trial_id}: training ended ({outcome.status}) unvalidated")
    tune.report({**final[-1], "finished": True})


# --- the driver ------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What a sweep did: its parent run, the final table, the best trial and its version."""

    parent_run_id: str
    rows: list[dict[str, Any]]
    out_dir: Path
    best: dict[str, Any] | None = None
    model_version: int | None = None
    files: list[Path] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The one-line JSON the command prints last."""
        counts = {o: sum(r["outcome"] == o for r in self.rows) for o in OUTCOMES}
        return {
            "parent_run_id": self.parent_run_id,
            "trials": len(self.rows),
            **counts,
            "best_run_id": self.best["mlflow_run_id"] if self.best else None,
            "best_objective_usd": self.best[OBJECTIVE] if self.best else None,
            "model_version": self.model_version,
            "table": [str(p) for p in self.files],
        }


OUTCOMES = ("finished", "stopped", "error")
"""A trial's outcome: trained to the end, stopped early by the scheduler, or failed."""


def _require_tune() -> Any:
    """Ray Tune's module, with Optuna beside it, or a :class:`BackendError` saying how to
    install them."""
    from rlscale.common.backends import RAY_INSTALL_HINT

    try:
        import optuna  # noqa: F401  (OptunaSearch imports it lazily and fails late)
        from ray import tune
    except ImportError as err:
        raise BackendError(
            f"rlscale sweep needs Ray Tune and Optuna ({err}): {RAY_INSTALL_HINT}"
        ) from None
    return tune


def _absolute_uri(uri: str) -> str:
    """A ``sqlite:///relative.db`` URI made absolute: trials do not run in this folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def _scenario_file(spec: str) -> tuple[str, str] | None:
    """(name, text) of a scenario given as a file; None for a shipped name (every node has
    the shipped ones)."""
    path = scenario_path(spec)
    if Path(spec).is_file():
        return path.name, path.read_text()
    return None


def sweep(
    base: TrainConfig,
    *,
    trials: int,
    backend: Backend | None = None,
    fixed: set[str] | frozenset[str] = frozenset(),
    search_seed: int = 0,
    grace_steps: int | None = None,
    reduction_factor: int = DEFAULT_REDUCTION,
    out_dir: str | Path | None = None,
) -> SweepResult:
    """Run a sweep (see the module docstring) and register its best trial.

    :param base: the settings every trial starts from (``progress``: Tune's live view).
    :param trials: how many trials Tune samples.
    :param backend: ``local``: a local Ray cluster of ``workers`` CPUs started here; ``ray``:
        the cluster ``address`` or ``$RAY_ADDRESS`` names, else one started here.
    :param fixed: fields given as flags: not searched (``out_dir``: where the trials' run
        folders go, else ``OUT/runs``; ``run_name``: the parent run's name).
    :param grace_steps: env steps before the scheduler may stop a trial (default: its first
        validation, ``eval_every``).
    :raises ScenarioError: bad settings (the message names them).
    :raises BackendError: Ray, Tune or Optuna missing, or the cluster unreachable.
    """
    from rlscale.common.backends import ray_init
    from rlscale.common.tracking import require_mlflow, tracking_uri

    if trials < 1:
        raise ScenarioError(f"--trials {trials}: a sweep needs at least one trial")
    if reduction_factor < 2:
        raise ScenarioError(f"--reduction-factor {reduction_factor} must be at least 2")
    scenario = load_scenario(base.scenario)
    names = searched_fields(fixed)
    if grace_steps is None:  # the first validation, else (no validation before) the last
        first = base.eval_every if 0 < base.eval_every < base.total_timesteps else 0
        grace_steps = first or base.total_timesteps
    grace = grace_steps
    if grace < 1:
        raise ScenarioError(f"--grace-steps {grace_steps} must be at least 1")
    tune = _require_tune()
    require_mlflow()
    backend = backend or Backend("local")
    out = Path(out_dir or Path("out/sweep") / scenario.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = _absolute_uri(tracking_uri(base.tracking_uri))
    runs = Path(base.out_dir).resolve() if "out_dir" in fixed else out / "runs"
    base_values = {**base.to_dict(), "tracking_uri": uri, "out_dir": str(runs)}
    base_values["progress"] = False  # Tune's view instead of a bar per trial
    import ray

    started_ray = not ray.is_initialized()
    ray_init(backend, join=backend.name == "ray")
    if backend.name == "ray" and not uri.startswith(("http://", "https://", "databricks")):
        print(
            f"rlscale sweep: trials log to {uri}; workers on other machines cannot reach it: "
            "point MLFLOW_TRACKING_URI at a shared tracking server",
            file=sys.stderr,
        )
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = None
    status = "FAILED"
    try:
        parent = _start_parent(client, uri, scenario, base, names, trials, search_seed, grace)
        grid = _tuner(
            tune,
            base_values,
            names,
            parent,
            trials=trials,
            scenario_file=_scenario_file(base.scenario),
            search_seed=search_seed,
            grace=grace,
            reduction_factor=reduction_factor,
            storage=out / "tune",
            progress=base.progress,
        ).fit()
        result = _collect(client, grid, names, base_values, parent, out)
        if result.best is not None and base.register:
            from rlscale.training.export import register_logged_policy

            result.model_version = register_logged_policy(
                result.best["mlflow_run_id"],
                model_name=base.model_name,
                alias=base.alias,
                tracking_uri=uri,
            )
            client.set_tag(parent, "rlscale.sweep.model_version", str(result.model_version))
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if parent is not None:
            client.set_terminated(parent, status=status)
        if started_ray:
            ray.shutdown()


def _start_parent(
    client: Any,
    uri: str,
    scenario: Scenario,
    base: TrainConfig,
    names: list[str],
    trials: int,
    search_seed: int,
    grace: int,
) -> str:
    """The sweep's parent run, with what the sweep is (its trials are its children)."""
    from rlscale.common.tracking import ensure_experiment, log_params

    exp_id = ensure_experiment(client, uri, SWEEP_EXPERIMENT)
    run = client.create_run(
        exp_id,
        run_name=base.run_name or f"{scenario.name}__sweep__{trials}__{int(time.time())}",
        tags={"rlscale.command": "sweep", "rlscale.scenario": scenario.name},
    )
    space = {n: {"kind": SEARCH_SPACE[n][0], "args": SEARCH_SPACE[n][1]} for n in names}
    params = {
        "trials": trials,
        "search": "optuna-tpe",
        "search_seed": search_seed,
        "scheduler": "asha",
        "grace_steps": grace,
        "objective": OBJECTIVE,
        "search_space": json.dumps(space),
        **{
            f"base/{k}": v if isinstance(v, str) else json.dumps(v)
            for k, v in base.to_dict().items()
            if k not in names
        },
    }
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def _tuner(
    tune: Any,
    base_values: dict[str, Any],
    names: list[str],
    parent: str,
    *,
    trials: int,
    scenario_file: tuple[str, str] | None,
    search_seed: int,
    grace: int,
    reduction_factor: int,
    storage: Path,
    progress: bool,
) -> Any:
    """The Tuner: TPE through Optuna, ASHA on the objective, one trial per ``torch_threads``
    CPUs."""
    from optuna.samplers import TPESampler
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, base=base_values, parent_run_id=parent, scenario_file=scenario_file
        ),
        {"cpu": max(1, int(base_values["torch_threads"]))},
    )
    return tune.Tuner(
        trainable,
        param_space={n: _domain(*SEARCH_SPACE[n]) for n in names},
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE,
            mode="min",
            search_alg=OptunaSearch(sampler=TPESampler(seed=search_seed)),
            scheduler=ASHAScheduler(
                time_attr=TIME_ATTR,
                max_t=int(base_values["total_timesteps"]),
                grace_period=grace,
                reduction_factor=reduction_factor,
            ),
            num_samples=trials,
        ),
        run_config=tune.RunConfig(
            name=f"sweep-{parent[:8]}",
            storage_path=str(storage),
            verbose=None if progress else 0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _collect(
    client: Any,
    grid: Any,
    names: list[str],
    base_values: dict[str, Any],
    parent: str,
    out: Path,
) -> SweepResult:
    """The final table from Tune's results; trial runs closed and tagged with their outcome;
    the table written and logged to the parent run."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        outcome = "error" if r.error else ("finished" if m.get("finished") else "stopped")
        settings = _trial_config(r.config, base_values).to_dict() if r.config else {}
        row = {
            "trial": m.get("trial_id") or Path(r.path).name,
            "outcome": outcome,
            **{k: m.get(k) for k in TABLE_FIELDS[2:]},
            **{n: settings.get(n) for n in names},
            "mlflow_run_id": m.get("mlflow_run_id") or None,
        }
        if r.error:
            row["error"] = str(r.error).strip().splitlines()[-1][:300]
        rows.append(row)
        _close_trial_run(client, row)
    rows.sort(key=lambda r: (OUTCOMES.index(r["outcome"]), _or_inf(r[OBJECTIVE])))
    finished = [r for r in rows if r["outcome"] == "finished"]
    best = finished[0] if finished else None
    result = SweepResult(parent, rows, out, best)
    result.files = _write_table(rows, names, out)
    for path in result.files:
        client.log_artifact(parent, str(path))
    metrics = {f"sweep/{o}": float(sum(r["outcome"] == o for r in rows)) for o in OUTCOMES}
    if best is not None:
        metrics |= {f"best/{k}": float(best[k]) for k in (OBJECTIVE, "cost_usd", "slo_attainment")}
        client.set_tag(parent, "rlscale.sweep.best_run_id", best["mlflow_run_id"])
    from rlscale.common.tracking import log_metrics

    log_metrics(client, parent, metrics)
    return result


def _or_inf(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.inf


def _close_trial_run(client: Any, row: dict[str, Any]) -> None:
    """Tag a trial's run with its outcome; a stopped trial's run ends KILLED (its worker was
    ended while it trained: the run is left RUNNING, or FAILED by the stop's exception)."""
    run_id = row["mlflow_run_id"]
    if not run_id:
        return
    client.set_tag(run_id, OUTCOME_TAG, row["outcome"])
    if row["outcome"] == "stopped":
        client.set_terminated(run_id, status="KILLED")


def _write_table(rows: list[dict[str, Any]], names: list[str], out: Path) -> list[Path]:
    """``trials.json`` and ``trials.csv`` in ``out``."""
    columns = [*TABLE_FIELDS, *names, "mlflow_run_id", "error"]
    json_path, csv_path = out / "trials.json", out / "trials.csv"
    json_path.write_text(json.dumps(rows, indent=1) + "\n")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return [json_path, csv_path]


def format_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """The final table of trials as text, best first (``*`` marks the one registered)."""
    columns = [*TABLE_FIELDS, *names]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    for i, row in enumerate(cells):
        mark = "*" if i == 0 and rows[0]["outcome"] == "finished" else " "
        lines.append(mark + " " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    lines[0] = "  " + lines[0]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --- command line --------------------------------------------------------------------------


def add_sweep_parser(sub: Any) -> Any:
    """``rlscale sweep``."""
    from rlscale.common.backends import add_backend_arguments
    from rlscale.training.config import add_config_arguments

    p = sub.add_parser(
        "sweep",
        help="search training settings with Ray Tune (TPE, early stopping); registers the best",
        description=(
            "Train TRIALS policies with settings drawn by Optuna's TPE through Ray Tune, stop "
            "poor trials early (ASHA) on the validation cost at the SLO target, log each "
            "trial as an MLflow child run of one sweep run, and register the best as "
            "NAME@challenger. Searched: "
            + ", ".join(SEARCH_SPACE)
            + "; a setting given as a flag is fixed. Tune needs Ray: --backend local starts "
            "a local Ray cluster; --backend ray joins --address or $RAY_ADDRESS."
        ),
    )
    p.add_argument("--trials", type=int, required=True, help="trials to run")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the TPE sampler")
    p.add_argument(
        "--grace-steps",
        type=int,
        default=None,
        help="env steps before a trial may be stopped early (default: its first validation)",
    )
    p.add_argument(
        "--reduction-factor",
        type=int,
        default=DEFAULT_REDUCTION,
        help=f"ASHA keeps 1/this of the trials at each rung (default {DEFAULT_REDUCTION})",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="where the table goes (default out/sweep/SCENARIO)"
    )
    p.add_argument("--config", default=None, help="YAML or JSON file of base settings")
    add_backend_arguments(p)
    add_config_arguments(p)
    return p


def run_sweep(args: Any) -> int:
    """Run ``rlscale sweep``: Tune's live view, then the final table and one JSON line."""
    import dataclasses

    from rlscale.common.backends import backend_from_args
    from rlscale.common.tracking import TrackingError
    from rlscale.training.config import config_from_args, load_config_file

    try:
        backend = backend_from_args(args)
    except ValueError as err:
        raise ScenarioError(str(err)) from None
    base = config_from_args(args)
    fixed = {f.name for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    if args.config:
        fixed |= set(load_config_file(args.config))
    try:
        result = sweep(
            base,
            trials=args.trials,
            backend=backend,
            fixed=fixed,
            search_seed=args.search_seed,
            grace_steps=args.grace_steps,
            reduction_factor=args.reduction_factor,
            out_dir=args.out,
        )
    except (BackendError, TrackingError) as err:
        print(f"rlscale sweep: {err}", file=sys.stderr)
        return 2
    print(format_table(result.rows, searched_fields(fixed)))
    if result.best is None:
        print("no trial finished: nothing registered", file=sys.stderr)
    elif result.model_version is not None:
        print(
            f"best trial {result.best['trial']} (run {result.best['mlflow_run_id']}) registered "
            f"as {base.model_name} version {result.model_version}, alias {base.alias}"
        )
    print(json.dumps(result.summary()))
    return 0 if result.best is not None else 1
