"""Offline policy evaluation: every policy on held-out windows over several seeds.

``rlscale evaluate`` replays the held-out part of a scenario's workload (or of a user's own
trace, ``--trace``) through the simulator for each policy and reports, per policy, the mean and
95% confidence interval over seeds of cost, SLO attainment, latency percentiles, scale events,
cold starts, preemptions, GPU-hours by pool and cost per tenant.

The grid. Held-out windows are the ``test_starts`` of
:func:`~rlscale.envs.splits.split_scenario` (the last part of the workload, never used
for tuning or training). With
``windows="all"`` (the default) every seed runs every held-out window and a seed's value of a
metric is its mean over the windows, so each metric is *per episode* and the interval is over
seeds. With ``windows="cycle"`` seed ``s`` runs only window ``s mod W``: cheaper, and the
interval then also covers the spread between windows. Every episode of seed ``s`` starts from
the random stream ``s`` for every policy (common random numbers), which takes much of the
noise out of differences between policies. The replayed trace itself is fixed (workload seed
0); seeds vary the cluster's randomness (cold-start durations, spot prices and preemptions,
Poisson arrivals of synthetic load).

Episodes are independent :class:`EpisodeTask` s run by :func:`run_task`; the grid is a plain
loop today and can be fanned out over processes without touching anything else.

Every policy is built once per evaluation and runs every episode from its initial memory (a
policy holds only its configuration). The oracle (perfect foresight) is built per episode: a
:class:`PolicySpec` marked ``per_episode`` gets ``{"start_step", "seed"}`` added to its
parameters for each episode.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rlscale.envs.names import EPISODE_LATENCY_KEYS
from rlscale.envs.scenario import Scenario, ScenarioError, load_scenario, scenario_from_dict

if TYPE_CHECKING:
    import numpy as np

    from rlscale.agents.base import Policy
    from rlscale.agents.observe import EpisodeResult
    from rlscale.envs.simulator import ClusterSimulator
    from rlscale.envs.splits import Split

# The simulator (numba), scipy and the policies are imported where they are used: the CLI
# imports this module to build its parser, and `rlscale --help` should not compile kernels.

ORACLE = "oracle"
"""Registry name of the perfect-foresight lower bound."""

PER_EPISODE_POLICIES = frozenset({ORACLE})
"""Policies built anew for every episode, from the window's start step and the seed."""

BASELINES = ("static", "hpa", "keda", "knative", "rayserve", "predictive", "spot_aware")
"""Rule-based scalers: the default policy set and the candidates for "best baseline"."""

TRACE_FORMATS = ("azure", "mooncake", "servegen", "csv")

WindowMode = Literal["all", "cycle"]

SCALAR_METRICS = (
    "cost_usd",
    "cost_per_million_tokens_usd",
    "slo_attainment",
    *EPISODE_LATENCY_KEYS,
    "dropped",
    "completed",
    "scale_events",
    "cold_starts",
    "preemptions",
)
"""Per-episode numbers of :func:`run_episode`'s summary reported as they are."""

OTHER_TENANTS = "other"


# --- what to run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySpec:
    """One policy of the comparison.

    :param name: registry name (:func:`rlscale.agents.registry.known_policies`).
    :param params: parameters for :func:`make_policy`: a dict, a JSON file (such as a tuning
        result), or None for the policy's defaults.
    :param label: the name shown in results and plots (default ``name``).
    :param per_episode: build the policy for each episode with ``start_step`` and ``seed``
        added to its parameters (the oracle plans each window with perfect foresight).
    """

    name: str
    params: dict[str, Any] | str | Path | None = None
    label: str = ""
    per_episode: bool = False

    @property
    def display(self) -> str:
        """The label, or the registry name when no label was given."""
        return self.label or self.name

    def params_dict(self) -> dict[str, Any]:
        """The parameters as a dict (a JSON file read, a tuning result's ``params`` taken)."""
        if self.params is None:
            return {}
        if isinstance(self.params, dict):
            return dict(self.params)
        path = Path(self.params)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ScenarioError(
                f"--policy {self.name}={path}: cannot read parameters: {err}"
            ) from None
        if isinstance(raw, dict) and "params" in raw:
            raw = raw["params"]  # a tuning result file
        if not isinstance(raw, dict):
            raise ScenarioError(f"--policy {self.name}={path}: expected a JSON object")
        return raw


def parse_policy_arg(text: str, *, fetch_dir: str | Path | None = None) -> PolicySpec:
    """``NAME``, ``NAME=ARTIFACT`` (a JSON parameter file), ``onnx=FOLDER`` (an exported
    policy: its folder, ``manifest.json`` or ``model.onnx``), or ``ppo=SPEC`` as a
    :class:`PolicySpec`.

    ``ppo=SPEC`` is an exported policy wherever it is: ``models:/NAME@ALIAS``,
    ``models:/NAME/N``, the id of the MLflow run that logged it, or an export folder. A
    registered one is downloaded (into ``fetch_dir``, default a temporary folder that lives
    as long as the process) and evaluated as ``onnx=FOLDER``; its label says which version,
    ``ppo[rlscale-policy@champion=v3]``.

    :raises ScenarioError: a malformed argument, a missing file or folder, or a registry that
        cannot give the policy (the message says which and why).
    """
    name, sep, artifact = text.partition("=")
    name = name.strip()
    if not name or (sep and not artifact.strip()):
        raise ScenarioError(f"--policy expects NAME or NAME=PARAMS.json, got {text!r}")
    if name == "onnx":
        folder = Path(artifact.strip()) if sep else None
        if folder is None or not folder.exists():
            raise ScenarioError(f"--policy onnx=FOLDER: no exported policy at {folder}")
        label = (folder if folder.is_dir() else folder.parent).name
        return PolicySpec(name, {"artifact": str(folder)}, label=f"onnx[{label}]")
    if name == PPO:
        if not sep:
            raise ScenarioError(f"--policy ppo=SPEC: {PPO_SPEC_FORMS}")
        return _exported_spec(artifact.strip(), fetch_dir)
    params = Path(artifact.strip()) if sep else None
    if params is not None and not params.is_file():
        raise ScenarioError(f"--policy {name}={params}: no such file")
    return PolicySpec(name, params, per_episode=name in PER_EPISODE_POLICIES)


PPO = "ppo"
PPO_SPEC_FORMS = "SPEC is models:/NAME@ALIAS, models:/NAME/N, an MLflow run id, or an export folder"
_FETCH_DIRS: list[Any] = []
"""Temporary folders of downloaded policies, removed when the process ends."""


def _exported_spec(spec: str, fetch_dir: str | Path | None) -> PolicySpec:
    """``ppo=SPEC`` as an ``onnx`` :class:`PolicySpec` on a local folder."""
    from rlscale.training.model_registry import fetch_policy, is_model_uri, is_run_id

    local = Path(spec).expanduser()
    if local.exists():
        label = (local if local.is_dir() else local.parent).name
        return PolicySpec("onnx", {"artifact": str(local)}, label=f"{PPO}[{label}]")
    if not (is_model_uri(spec) or is_run_id(spec)):
        raise ScenarioError(f"--policy ppo={spec}: no such folder; {PPO_SPEC_FORMS}")
    import tempfile

    if fetch_dir is None:
        _FETCH_DIRS.append(tempfile.TemporaryDirectory(prefix="rlscale-evaluate-"))
        fetch_dir = _FETCH_DIRS[-1].name
    from rlscale.agents.onnx_policy import ArtifactError
    from rlscale.experiments.tracking import tracking_uri

    try:
        from mlflow.exceptions import MlflowException
    except ModuleNotFoundError:
        raise ScenarioError(
            f"--policy ppo={spec} needs the MLflow client: pip install 'rlscale[registry]'"
        ) from None
    try:
        Path(fetch_dir).mkdir(parents=True, exist_ok=True)
        fetched = fetch_policy(spec, tempfile.mkdtemp(prefix="policy-", dir=fetch_dir))
    except (MlflowException, ArtifactError, OSError) as err:
        raise ScenarioError(
            f"--policy ppo={spec}: cannot fetch it from the registry at {tracking_uri()}: {err}"
        ) from None
    return PolicySpec(
        "onnx",
        {"artifact": str(fetched.folder), "origin": fetched.origin},
        label=f"{PPO}[{fetched.label}]",
    )


def _with_labels(specs: Sequence[PolicySpec]) -> list[PolicySpec]:
    """Specs with unique labels: a repeated name gets its parameter file's stem, then a count."""
    names = [s.name for s in specs]
    out: list[PolicySpec] = []
    seen: set[str] = set()
    for spec in specs:
        label = spec.display
        if not spec.label and names.count(spec.name) > 1 and isinstance(spec.params, str | Path):
            label = f"{spec.name}[{Path(spec.params).stem}]"
        base, k = label, 2
        while label in seen:
            label, k = f"{base}#{k}", k + 1
        seen.add(label)
        out.append(
            PolicySpec(spec.name, spec.params, label, spec.per_episode or spec.name == ORACLE)
        )
    return out


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


@dataclass(frozen=True)
class EpisodeTask:
    """One cell of the grid: a policy on one held-out window under one seed."""

    spec: PolicySpec
    seed: int
    start_step: int
    record: bool = False
    """Keep the per-step timeline (one episode per policy feeds the load/capacity plot)."""


def grid_tasks(
    specs: Sequence[PolicySpec],
    seeds: Sequence[int],
    test_starts: Sequence[int],
    windows: WindowMode = "all",
) -> list[EpisodeTask]:
    """The evaluation grid, in a fixed order; the first episode of each policy is recorded."""
    if windows not in ("all", "cycle"):
        raise ScenarioError(f"windows must be 'all' or 'cycle', got {windows!r}")
    if not test_starts:
        raise ScenarioError("no held-out windows to evaluate on")
    tasks: list[EpisodeTask] = []
    for spec in specs:
        for k, seed in enumerate(seeds):
            if windows == "all":
                starts: Sequence[int] = test_starts
            else:
                starts = (test_starts[k % len(test_starts)],)
            for w, start in enumerate(starts):
                tasks.append(EpisodeTask(spec, int(seed), int(start), record=k == 0 and w == 0))
    return tasks


def run_task(
    scenario: Scenario, task: EpisodeTask, sim: ClusterSimulator, policy: Policy | None = None
) -> EpisodeResult:
    """Run one grid cell on ``sim`` (a one-cluster simulator of ``scenario``).

    :param policy: the spec's policy, already built (a policy holds only its configuration,
        so one object serves every episode); None: built here. Per-episode specs are always
        built here.
    """
    from rlscale.agents.observe import run_episode

    if policy is None or task.spec.per_episode:
        from rlscale.agents.registry import make_policy

        params = task.spec.params_dict()
        if task.spec.per_episode:
            params = {**params, "start_step": task.start_step, "seed": task.seed}
        policy = make_policy(task.spec.name, scenario, params)
    return run_episode(policy, sim, seed=task.seed, start_step=task.start_step, record=task.record)


# --- aggregation ---------------------------------------------------------------------------------


def mean_ci95(values: Sequence[float]) -> dict[str, Any]:
    """Mean and two-sided 95% t-interval of the mean, ``{"mean": m, "ci95": [lo, hi]}``.

    Identical values give a zero-width interval; one value gives ``[None, None]`` (no spread
    can be estimated from one seed, and a zero width would claim certainty).
    """
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"mean": None, "ci95": [None, None]}
    mean = float(x.mean())
    if x.size == 1:
        return {"mean": mean, "ci95": [None, None]}
    if float(np.ptp(x)) == 0.0:
        # the rounding of a float mean must not invent a nonzero width
        return {"mean": float(x[0]), "ci95": [float(x[0]), float(x[0])]}
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def top_tenants(results: Sequence[EpisodeResult], n: int) -> list[str]:
    """The ``n`` tenants with the highest cost over all episodes of all policies."""
    totals: dict[str, float] = {}
    for r in results:
        for tenant, cost in r.summary.get("cost_by_tenant_usd", {}).items():
            totals[tenant] = totals.get(tenant, 0.0) + float(cost)
    return [t for t, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[: max(n, 0)]]


def flatten_summary(
    summary: dict[str, Any], pool_purchase: dict[str, str], tenants: Sequence[str]
) -> dict[str, float]:
    """One episode's summary as flat ``metric -> number``, nested ones keyed ``group/key``.

    Tenants outside ``tenants`` are summed into ``cost_per_tenant_usd/other`` so the result
    stays small for traces with hundreds of API keys.
    """
    flat = {k: float(summary[k]) for k in SCALAR_METRICS}
    for pool, hours in summary["gpu_hours"].items():
        flat[f"gpu_hours/{pool}"] = float(hours)
    by_purchase = dict.fromkeys(sorted(set(pool_purchase.values())), 0.0)
    for pool, cost in summary["cost_by_pool_usd"].items():
        flat[f"cost_by_pool_usd/{pool}"] = float(cost)
        by_purchase[pool_purchase[pool]] += float(cost)
    for purchase, cost in by_purchase.items():
        flat[f"cost_by_purchase_usd/{purchase}"] = cost
    by_tenant = summary.get("cost_by_tenant_usd", {})
    other_key = OTHER_TENANTS if OTHER_TENANTS not in tenants else f"{OTHER_TENANTS}*"
    for tenant in tenants:
        flat[f"cost_per_tenant_usd/{tenant}"] = float(by_tenant.get(tenant, 0.0))
    kept = set(tenants)
    if len(by_tenant) > len(kept):
        rest = sum(float(v) for t, v in by_tenant.items() if t not in kept)
        flat[f"cost_per_tenant_usd/{other_key}"] = rest
    return flat


def aggregate(
    flat_by_seed: dict[int, list[dict[str, float]]],
) -> dict[str, dict[str, Any]]:
    """Per metric: mean over a seed's windows, then mean and 95% CI over seeds."""
    import numpy as np

    seeds = sorted(flat_by_seed)
    keys: list[str] = []
    for rows in flat_by_seed.values():
        for row in rows:
            keys.extend(k for k in row if k not in keys)
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        per_seed = [
            float(np.mean([row.get(key, 0.0) for row in flat_by_seed[s]]))
            for s in seeds
            if flat_by_seed[s]
        ]
        out[key] = mean_ci95(per_seed)
    return out


# --- the evaluation ------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """What :func:`evaluate` produced: the JSON results and what the report plots besides."""

    results: dict[str, Any]
    """Exactly what ``results.json`` holds."""
    timelines: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Per policy label, the per-step timeline of its first episode (seed 0, first window)."""
    pool_capacity_rps: dict[str, float] = field(default_factory=dict)
    """Requests/s one ready replica of each pool sustains for the workload's request mix."""
    episodes: list[dict[str, Any]] = field(default_factory=list)
    """Every episode's flat metrics with its policy, seed and start step."""


def default_policies() -> list[PolicySpec]:
    """The registered baselines (what ``--policy`` defaults to)."""
    from rlscale.agents.registry import known_policies

    known = set(known_policies())
    return [PolicySpec(name) for name in BASELINES if name in known]


def baseline_specs(scenario: Scenario, tuning_dir: Path) -> tuple[list[PolicySpec], str]:
    """The baselines to compare with, and a note saying which: the tuned ones (every
    ``<policy>.json`` in ``tuning_dir``, as ``rlscale tune-baseline`` writes them), else every
    baseline with its defaults. Baselines that refuse the scenario are left out and named in
    the note.

    :raises ScenarioError: no baseline can run the scenario.
    """
    from rlscale.agents.registry import known_policies, make_policy

    known = set(known_policies())
    names = [b for b in BASELINES if b in known]
    tuned = [n for n in names if (tuning_dir / f"{n}.json").is_file()]
    if tuned:
        specs = [PolicySpec(n, tuning_dir / f"{n}.json", label=f"{n}[tuned]") for n in tuned]
        note = f"tuned baselines from {tuning_dir}: {', '.join(tuned)}"
    else:
        specs = [PolicySpec(n) for n in names]
        note = (
            f"no tuned baselines in {tuning_dir} (run rlscale tune-baseline --scenario "
            f"{scenario.name} --policy all): every baseline with its defaults"
        )
    kept, refused = [], []
    for spec in specs:
        try:
            make_policy(spec.name, scenario, spec.params_dict())
            kept.append(spec)
        except ScenarioError as err:
            refused.append(f"{spec.display} ({err})")
    if refused:
        note += f"; left out, they cannot run this scenario: {'; '.join(refused)}"
    if not kept:
        raise ScenarioError(f"no baseline can run scenario {scenario.name}: {note}")
    return kept, note


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
    :raises ScenarioError: a bad scenario, trace, policy name, or grid setting.
    """
    from tqdm import tqdm

    from rlscale.agents.registry import known_policies, make_policy
    from rlscale.envs.simulator import ClusterSimulator
    from rlscale.envs.splits import split_scenario

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
    if include_oracle and ORACLE in known and all(s.name != ORACLE for s in specs):
        specs.append(PolicySpec(ORACLE, per_episode=True))
    if not specs:
        raise ScenarioError(f"no policies to evaluate; known: {sorted(known)}")
    specs = _with_labels(specs)

    sc, split = split_scenario(sc)
    built: dict[str, Policy] = {}
    for spec in specs:
        # bad parameter files fail here, not after the other policies' episodes have run; the
        # policy built is the one every episode runs (an export is verified and loaded once)
        params = spec.params_dict()
        if not spec.per_episode:
            built[spec.display] = make_policy(spec.name, sc, params)
    test_starts = list(split.test_starts[:max_windows] if max_windows else split.test_starts)
    sim = ClusterSimulator(sc, 1)
    caps = sim.pool_capacity_rps
    pool_purchase = {p.name: p.purchase for p in sc.pools}

    tasks = grid_tasks(specs, seed_list, test_starts, windows)
    raw: list[tuple[EpisodeTask, EpisodeResult]] = []
    oracle_cpu_s: list[float] = []  # per oracle episode: its planning, tuning replays and run
    bar = tqdm(tasks, desc=f"evaluate {sc.name}", unit="episode", disable=not progress)
    for task in bar:
        bar.set_postfix_str(f"{task.spec.display} seed={task.seed} start={task.start_step}")
        tic = time.process_time()
        raw.append((task, run_task(sc, task, sim, built.get(task.spec.display))))
        if task.spec.name == ORACLE:
            oracle_cpu_s.append(time.process_time() - tic)

    tenants = top_tenants([r for _, r in raw], n_top_tenants)
    by_policy: dict[str, dict[int, list[dict[str, float]]]] = {s.display: {} for s in specs}
    episodes: list[dict[str, Any]] = []
    timelines: dict[str, dict[str, np.ndarray]] = {}
    for task, result in raw:
        flat = flatten_summary(result.summary, pool_purchase, tenants)
        by_policy[task.spec.display].setdefault(task.seed, []).append(flat)
        episodes.append(
            {"policy": task.spec.display, "seed": task.seed, "start_step": task.start_step, **flat}
        )
        if task.record:
            timelines[task.spec.display] = result.timeline

    results = {
        "scenario": sc.name,
        "trace": _trace_info(sc, replaced=trace is not None),
        "seeds": seed_list,
        "windows": windows,
        "held_out": _held_out_info(sc, split, test_starts),
        "slo": sc.slo.model_dump(mode="json"),
        "pools": {p.name: {"purchase": p.purchase, "price_usd_h": p.price_usd_h} for p in sc.pools},
        "oracle": next((s.display for s in specs if s.name == ORACLE), None),
        "oracle_cpu_s": mean_ci95(oracle_cpu_s) if oracle_cpu_s else None,
        "baselines": [s.display for s in specs if s.name in BASELINES],
        "policies": {label: aggregate(rows) for label, rows in by_policy.items()},
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return Evaluation(
        results=results,
        timelines=timelines,
        pool_capacity_rps={p.name: float(c) for p, c in zip(sc.pools, caps, strict=True)},
        episodes=episodes,
    )


def _trace_info(sc: Scenario, *, replaced: bool) -> dict[str, Any]:
    wl = sc.workload
    return {
        "format": wl.kind,
        "path": wl.path,
        "source": "--trace" if replaced else "scenario",
    }


def _held_out_info(sc: Scenario, split: Split, test_starts: Sequence[int]) -> dict[str, Any]:
    return {
        "test_starts": [int(s) for s in test_starts],
        "boundary_step": split.boundary_step,
        "total_steps": split.total_steps,
        "episode_steps": split.episode_steps,
        "episode_hours": sc.episode_hours,
        "control_interval_s": sc.control_interval_s,
    }


def write_results(evaluation: Evaluation, out_dir: Path) -> Path:
    """Write ``results.json`` (strict JSON: NaN and infinities become null)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(_json_safe(evaluation.results), indent=2, allow_nan=False) + "\n")
    return path


def _json_safe(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    p.add_argument("--out", type=Path, default=None, help="default out/evaluate/<scenario>")
    return p


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``rlscale evaluate``; prints one JSON line with the output paths and MLflow run.

    :returns: 0; 2 when MLflow is missing (checked before the grid runs); 1 when the run could
        not be logged (results.json and report.html are written all the same).
    :raises ScenarioError: bad arguments (the CLI prints it and exits 2).
    """
    from rlscale.experiments.report import write_report
    from rlscale.experiments.tracking import TrackingError, log_evaluation, require_mlflow

    if not args.no_mlflow:
        try:
            require_mlflow()  # fail before the grid runs, not after
        except TrackingError as err:
            print(f"rlscale: {err}", file=sys.stderr)
            return 2
    policies = [parse_policy_arg(p) for p in args.policy] if args.policy else None
    if args.tuned is not None:
        from rlscale.agents.tuning import tuning_dir

        sc = load_scenario(args.scenario)
        folder = Path(args.tuned) if args.tuned else tuning_dir(sc.name)
        tuned, note = baseline_specs(sc, folder)
        print(f"rlscale evaluate: {note}", file=sys.stderr)
        policies = [*(policies or []), *tuned]
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
    )
    out_dir = args.out or Path("out/evaluate") / evaluation.results["scenario"]
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
