"""What an evaluation produced, and how episodes become it: aggregation over seeds.

:func:`summarize` turns the grid's episodes (each an :class:`EpisodeTask` with its
:class:`~rlscale.agents.observe.EpisodeResult`, in any order) into an :class:`Evaluation`:
per policy and metric the mean over a seed's windows, then the mean and 95% interval over
seeds. The episodes are put in the grid's order first, so the numbers do not depend on the
order in which a backend finished them. Nothing here runs a simulator.

What ``results.json`` holds is a :class:`Results`: per policy a :class:`PolicySummary`
(``metric -> MeanCI``, with its :class:`TenantCosts`), each recorded :class:`CostTimeline`,
the :class:`HeldOut` windows and split, the oracle's CPU time. :meth:`Results.to_json` writes
the file and :func:`load_results` reads it back (a file of :data:`RESULTS_VERSION` or of the
unversioned layout before it; anything else is a :class:`ResultsError` naming the field). The
report (``experiments/report.py``), the promotion gate, the cost report and MLflow logging
read these typed fields, not the JSON.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import (
    ConfigDict,
    Field,
    RootModel,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass as typed

from rlscale.envs.names import (
    BATCH_ATTAINMENT,
    BATCH_COUNTS,
    BUDGET_GROUPS,
    CAP_COUNTS,
    COST_BY_CLASS_USD,
    EPISODE_LATENCY_KEYS,
)
from rlscale.envs.scenario import SLOConfig

if TYPE_CHECKING:
    import numpy as np

    from rlscale.agents.observe import EpisodeResult
    from rlscale.common.tracking import TrackedRun
    from rlscale.envs.scenario import Scenario
    from rlscale.envs.splits import Split
    from rlscale.experiments.grid import EpisodeTask, PolicySpec

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

TENANT_GROUPS = {
    "cost_per_tenant_usd": "cost_by_tenant_usd",
    "idle_cost_per_tenant_usd": "idle_cost_by_tenant_usd",
    "busy_gpu_hours_per_tenant": "busy_gpu_hours_by_tenant",
}
"""Flat metric prefix -> the episode summary's per-tenant dict it comes from
(:mod:`rlscale.envs.metering`: a tenant's cost, the idle part of it, its busy GPU-hours)."""

MAX_TIMELINE_POINTS = 96
"""A recorded episode's cost timeline in ``results.json`` is summed into at most this many
spans, so the file stays small for long episodes and hundreds of tenants."""


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

    Tenants outside ``tenants`` are summed into ``cost_per_tenant_usd/other`` (and likewise
    their idle cost and busy GPU-hours) so the result stays small for traces with hundreds of
    API keys. ``idle_cost_usd`` is the part of the bill no tenant's tokens kept busy.
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
    if "idle_cost_by_tenant_usd" in summary:
        flat["idle_cost_usd"] = float(sum(summary["idle_cost_by_tenant_usd"].values()))
    for prefix, key in TENANT_GROUPS.items():
        if key in summary:
            for tenant, value in top_and_other(summary[key], tenants).items():
                flat[f"{prefix}/{tenant}"] = value
    for group in BUDGET_GROUPS:
        for budget, value in summary.get(group, {}).items():
            flat[f"{group}/{budget}"] = float(value)
    flat.update({k: float(summary[k]) for k in CAP_COUNTS if k in summary})
    # request classes (only with batch work): per-class cost, the batch requests' accounting
    # and the share of them completed within their deadline
    for cls, cost in summary.get(COST_BY_CLASS_USD, {}).items():
        flat[f"{COST_BY_CLASS_USD}/{cls}"] = float(cost)
    for key, value in summary.get(BATCH_COUNTS, {}).items():
        flat[f"{BATCH_COUNTS}/{key}"] = float(value)
    if BATCH_ATTAINMENT in summary:
        flat[BATCH_ATTAINMENT] = float(summary[BATCH_ATTAINMENT])
    return flat


def other_key(tenants: Sequence[str]) -> str:
    """The name the tenants beyond ``tenants`` are summed under (never one of theirs)."""
    return OTHER_TENANTS if OTHER_TENANTS not in tenants else f"{OTHER_TENANTS}*"


def top_and_other(by_tenant: dict[str, Any], tenants: Sequence[str]) -> dict[str, Any]:
    """``by_tenant`` for ``tenants``, and the rest summed as :func:`other_key` (when there
    is a rest). Values are numbers, or equally long sequences summed element by element."""
    import numpy as np

    out: dict[str, Any] = {}
    for tenant in tenants:
        value = by_tenant.get(tenant, 0.0)
        out[tenant] = float(value) if np.ndim(value) == 0 else np.asarray(value, dtype=float)
    named = set(tenants)
    rest = [v for t, v in by_tenant.items() if t not in named]
    if rest:
        total = np.sum(np.asarray(rest, dtype=float), axis=0)
        out[other_key(tenants)] = float(total) if np.ndim(total) == 0 else total
    return out


def aggregate(
    flat_by_seed: dict[int, list[dict[str, float]]],
) -> PolicySummary:
    """Per metric: mean over a seed's windows, then mean and 95% CI over seeds."""
    import numpy as np

    seeds = sorted(flat_by_seed)
    keys: list[str] = []
    for rows in flat_by_seed.values():
        for row in rows:
            keys.extend(k for k in row if k not in keys)
    out: dict[str, MeanCI] = {}
    for key in keys:
        per_seed = [
            float(np.mean([row.get(key, 0.0) for row in flat_by_seed[s]]))
            for s in seeds
            if flat_by_seed[s]
        ]
        out[key] = MeanCI.of(per_seed)
    return PolicySummary(out)


# --- the typed results -------------------------------------------------------------------------

RESULTS_VERSION = 1
"""The layout of ``results.json`` this code writes and reads, in its ``version`` field. A file
without one was written before the field existed (main up to d0578ef), in the same layout."""


class ResultsError(ValueError):
    """A ``results.json`` that is not an evaluation's results of :data:`RESULTS_VERSION`: the
    message names the field (``policies.static.cost_usd.mean``) and what was wrong."""


Number = StrictFloat
"""A JSON number (an integer is taken as a float; a string or a boolean is refused)."""


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@typed(frozen=True)
class MeanCI:
    """A metric over seeds: the mean and the two-sided 95% t-interval of the mean.

    ``mean`` is None when there was no value (or it was not finite); ``ci95`` is
    ``(None, None)`` when no spread can be estimated (one seed)."""

    mean: Number | None
    ci95: tuple[Number | None, Number | None] = (None, None)

    @classmethod
    def of(cls, values: Sequence[float]) -> MeanCI:
        """:func:`mean_ci95` of ``values``; a value that is not finite is None, as
        ``results.json`` writes it, so a :class:`Results` reads back equal to itself."""
        agg = mean_ci95(values)
        lo, hi = (_finite(x) for x in agg["ci95"])
        return cls(_finite(agg["mean"]), (lo, hi))

    @property
    def value(self) -> float:
        """The mean, NaN when there is none (for arithmetic and plots)."""
        return math.nan if self.mean is None else float(self.mean)

    @property
    def interval(self) -> tuple[float, float] | None:
        """``(low, high)``, or None when the interval is undefined."""
        lo, hi = self.ci95
        return None if lo is None or hi is None else (float(lo), float(hi))

    def to_json(self) -> dict[str, Any]:
        return _dump(MeanCI, self)


NO_VALUE = MeanCI(None)
"""What a metric a policy has no value of reads as."""


@typed(frozen=True)
class TenantCosts:
    """A policy's per-tenant numbers: the top tenants by name and the rest as ``other``
    (:func:`other_key`), each a :class:`MeanCI` over seeds."""

    cost_usd: dict[str, MeanCI]
    """A tenant's share of the bill (see ``TENANT_NOTE`` in the report)."""
    idle_cost_usd: dict[str, MeanCI]
    """The part of it no tokens kept busy."""
    busy_gpu_hours: dict[str, MeanCI]
    """GPU-hours its tokens needed."""


class PolicySummary(RootModel[dict[str, MeanCI]]):
    """One policy's metrics, ``metric -> MeanCI``; nested ones are keyed ``group/key``
    (``cost_by_pool_usd/h100``, ``cost_per_tenant_usd/alpha``), as in ``results.json``."""

    model_config = ConfigDict(frozen=True)

    @property
    def metrics(self) -> dict[str, MeanCI]:
        return self.root

    def __getitem__(self, metric: str) -> MeanCI:
        return self.root[metric]

    def __contains__(self, metric: object) -> bool:
        return metric in self.root

    def get(self, metric: str) -> MeanCI:
        """The metric, or :data:`NO_VALUE` when this policy has none."""
        return self.root.get(metric, NO_VALUE)

    def mean(self, metric: str) -> float:
        """The metric's mean over seeds; NaN when it has none."""
        return self.get(metric).value

    def group(self, prefix: str) -> dict[str, MeanCI]:
        """The metrics keyed ``prefix/KEY``, as ``KEY -> MeanCI`` (pools, tenants)."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.root.items() if k.startswith(prefix + "/")}

    @property
    def tenants(self) -> TenantCosts:
        prefix = dict(zip(("cost", "idle", "busy"), TENANT_GROUPS, strict=True))
        return TenantCosts(
            self.group(prefix["cost"]), self.group(prefix["idle"]), self.group(prefix["busy"])
        )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@typed(frozen=True)
class CostTimeline:
    """One recorded episode's bill over time (seed, start step), in spans of ``span_s``; each
    split (pools, purchase options, tenants) sums to ``bill_usd``."""

    seed: StrictInt
    start_step: StrictInt
    start_s: Number
    span_s: Number
    bill_usd: Number
    by_pool_usd: dict[str, list[Number]]
    by_purchase_usd: dict[str, list[Number]]
    by_tenant_usd: dict[str, list[Number]]
    idle_by_tenant_usd: dict[str, list[Number]]

    def to_json(self) -> dict[str, Any]:
        return _dump(CostTimeline, self)


@typed(frozen=True)
class HeldOut:
    """The windows an evaluation ran and the split they came from."""

    test_starts: list[StrictInt]
    """The held-out windows' start steps, in the grid's order."""
    boundary_step: StrictInt
    """Tuning and training use steps before this one."""
    total_steps: StrictInt
    episode_steps: StrictInt
    episode_hours: Number
    control_interval_s: Number


@typed(frozen=True)
class TraceInfo:
    """The workload replayed: its format, file (None: synthetic), and whether ``--trace``
    replaced the scenario's own."""

    format: StrictStr
    path: StrictStr | None
    source: StrictStr


@typed(frozen=True)
class PoolInfo:
    """A pool as the evaluation billed it."""

    purchase: StrictStr
    price_usd_h: Number


@typed(frozen=True, kw_only=True)
class Results:
    """What ``results.json`` holds, typed and validated (pydantic): :meth:`to_json` writes it,
    :meth:`from_json` (and :func:`load_results`) reads it back, a file of today's layout or
    of the unversioned one before it. Readers (the report, the promotion gate, the cost
    report, MLflow logging) read these fields, never the JSON."""

    version: StrictInt = RESULTS_VERSION
    scenario: StrictStr
    trace: TraceInfo
    seeds: list[StrictInt]
    windows: StrictStr
    """``all`` (every seed runs every held-out window) or ``cycle``."""
    held_out: HeldOut
    slo: SLOConfig
    pools: dict[str, PoolInfo]
    oracle: StrictStr | None = None
    """The oracle's label, when it ran."""
    oracle_cpu_s: MeanCI | None = None
    """CPU seconds of the oracle per episode window (its solve, tuning replays and episode)."""
    baselines: list[StrictStr] = Field(default_factory=list)
    policies: dict[str, PolicySummary]
    """Per policy label, in the grid's order."""
    cost_timelines: dict[str, CostTimeline] | None = None
    """Per policy label, its recorded episode's bill over time; None in a file written before
    timelines were recorded."""
    top_tenants: list[StrictStr] | None = None
    """The tenants reported by name; the rest are summed as :func:`other_key` of them."""
    created_utc: StrictStr | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``results.json`` (NaN left as is: :func:`json_safe` nulls it)."""
        return _dump(Results, self)

    @classmethod
    def from_json(cls, data: Any) -> Results:
        """Read a ``results.json`` object.

        :raises ResultsError: another version, or a field missing or of the wrong type (the
            message names it).
        """
        if not isinstance(data, dict):
            raise ResultsError(f"results: expected an object, got {_kind(data)}")
        version = data.get("version", RESULTS_VERSION)
        if version != RESULTS_VERSION:
            raise ResultsError(
                f"version: this rlscale reads results.json version {RESULTS_VERSION}, the file "
                f"is version {version!r}; rerun rlscale evaluate with this version"
            )
        try:
            return _adapter(Results).validate_python({**data, "version": version})
        except ValidationError as err:
            raise ResultsError(_first_error(err)) from None

    def mean(self, policy: str, metric: str) -> float:
        """``policies[policy]``'s mean of ``metric``; NaN when it has none."""
        return self.policies[policy].mean(metric)

    def mlflow_metrics(self) -> dict[str, float]:
        """Every policy's means as namespaced MLflow metrics (``hpa/cost_usd``); a metric
        without a mean is left out."""
        from rlscale.common.tracking import metric_key

        return {
            metric_key(policy, metric): float(agg.mean)
            for policy, summary in self.policies.items()
            for metric, agg in summary.metrics.items()
            if agg.mean is not None
        }

    def mlflow_params(self) -> dict[str, str]:
        """What the evaluation was: scenario, trace, seeds, grid, policies, held-out windows."""
        params = {
            "scenario": self.scenario,
            "trace_format": self.trace.format,
            "trace_path": self.trace.path,
            "trace_source": self.trace.source,
            "seeds": json.dumps(self.seeds),
            "n_seeds": len(self.seeds),
            "windows": self.windows,
            "test_starts": json.dumps(self.held_out.test_starts),
            "episode_hours": self.held_out.episode_hours,
            "policies": json.dumps(list(self.policies)),
            "oracle": self.oracle,
        }
        return {k: str(v) for k, v in params.items()}


@functools.cache
def _adapter(kind: type) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def _dump(kind: type, value: Any) -> dict[str, Any]:
    return _adapter(kind).dump_python(value, mode="json")


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r:.40}"


def _first_error(err: ValidationError) -> str:
    """The first problem as ``field.path[3]: what``, the way a user finds it in the file."""
    first = err.errors(include_url=False)[0]
    at = ""
    for part in first["loc"]:
        at += f"[{part}]" if isinstance(part, int) else (f".{part}" if at else str(part))
    if first["type"] == "missing":
        return f"{at}: missing"
    return f"{at}: {first['msg']}, got {_kind(first['input'])}"


def load_results(path: str | Path) -> Results:
    """The :class:`Results` of a ``results.json`` file.

    :raises ResultsError: no such file, not JSON, or not an evaluation's results (the message
        names the file and the field).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsError(f"{path} is not a JSON file: {err}") from None
    try:
        return Results.from_json(data)
    except ResultsError as err:
        raise ResultsError(f"{path}: {err}") from None


@dataclass
class Evaluation:
    """What an evaluation produced: the JSON results and what the report plots besides."""

    results: Results
    """What ``results.json`` holds (:meth:`Results.to_json`)."""
    timelines: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Per policy label, the per-step timeline of its first episode (seed 0, first window)."""
    pool_capacity_rps: dict[str, float] = field(default_factory=dict)
    """Requests/s one ready replica of each pool sustains for the workload's request mix."""
    episodes: list[dict[str, Any]] = field(default_factory=list)
    """Every episode's flat metrics with its policy, seed and start step."""
    task_cpu_s: list[dict[str, Any]] = field(default_factory=list)
    """Per grid task in the grid's order: policy, seed, start step and the CPU seconds its
    worker spent on it (the oracle's solve included); not in ``results.json``, since it
    varies between runs (``rlscale bench evaluate`` reads it)."""


def summarize(
    scenario: Scenario,
    split: Split,
    specs: Sequence[PolicySpec],
    episodes: Sequence[tuple[EpisodeTask, EpisodeResult]],
    *,
    seeds: Sequence[int],
    windows: str,
    test_starts: Sequence[int],
    trace_replaced: bool,
    n_top_tenants: int,
    pool_capacity_rps: dict[str, float],
) -> Evaluation:
    """The :class:`Evaluation` of a finished grid.

    :param episodes: every task with its result, in any order (sorted into the grid's order:
        policy as listed in ``specs``, then seed as in ``seeds``, then window as in
        ``test_starts``, so float sums run in one order whatever order the tasks ran in).
    """
    from rlscale.agents.registry import PolicyKind, entry

    order = {s.display: k for k, s in enumerate(specs)}
    seed_rank = {int(s): k for k, s in enumerate(seeds)}
    start_rank = {int(s): k for k, s in enumerate(test_starts)}
    raw = sorted(
        episodes,
        key=lambda tr: (
            order[tr[0].spec.display],
            seed_rank[tr[0].seed],
            start_rank[tr[0].start_step],
        ),
    )
    pool_purchase = {p.name: p.purchase for p in scenario.pools}
    tenants = top_tenants([r for _, r in raw], n_top_tenants)
    by_policy: dict[str, dict[int, list[dict[str, float]]]] = {s.display: {} for s in specs}
    rows: list[dict[str, Any]] = []
    timelines: dict[str, dict[str, np.ndarray]] = {}
    cost_timelines: dict[str, CostTimeline] = {}
    for task, result in raw:
        flat = flatten_summary(result.summary, pool_purchase, tenants)
        by_policy[task.spec.display].setdefault(task.seed, []).append(flat)
        rows.append(
            {"policy": task.spec.display, "seed": task.seed, "start_step": task.start_step, **flat}
        )
        if task.record:
            timelines[task.spec.display] = result.timeline
            cost_timelines[task.spec.display] = cost_timeline(
                task, result, scenario, pool_purchase, tenants
            )
    kinds = {s.display: entry(s.name).kind for s in specs}
    oracle = next((k for k, v in kinds.items() if v is PolicyKind.ORACLE), None)
    # per oracle episode window: its solve, its tuning replays and its episode, in its worker
    oracle_cpu_s = [r.cpu_s for t, r in raw if t.spec.display == oracle and r.cpu_s is not None]
    results = Results(
        scenario=scenario.name,
        trace=trace_info(scenario, replaced=trace_replaced),
        seeds=[int(s) for s in seeds],
        windows=windows,
        held_out=held_out_info(scenario, split, test_starts),
        slo=scenario.slo.model_copy(),
        pools={p.name: PoolInfo(p.purchase, float(p.price_usd_h)) for p in scenario.pools},
        oracle=oracle,
        oracle_cpu_s=MeanCI.of(oracle_cpu_s) if oracle_cpu_s else None,
        baselines=[k for k, v in kinds.items() if v is PolicyKind.BASELINE],
        policies={label: aggregate(by_seed) for label, by_seed in by_policy.items()},
        cost_timelines=cost_timelines,
        top_tenants=tenants,
        created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    task_cpu_s = [
        {"policy": t.spec.display, "seed": t.seed, "start_step": t.start_step, "cpu_s": r.cpu_s}
        for t, r in raw
    ]
    return Evaluation(
        results=results,
        timelines=timelines,
        pool_capacity_rps=pool_capacity_rps,
        episodes=rows,
        task_cpu_s=task_cpu_s,
    )


def cost_timeline(
    task: EpisodeTask,
    result: EpisodeResult,
    scenario: Scenario,
    pool_purchase: dict[str, str],
    tenants: Sequence[str],
) -> CostTimeline:
    """A recorded episode's bill over time, in at most :data:`MAX_TIMELINE_POINTS` spans:
    by pool, by purchase option, and by tenant (``tenants`` by name, the rest as ``other``)
    with the idle part of each tenant's cost. Each split sums to ``bill_usd``."""
    import numpy as np

    tl = result.timeline
    steps = len(tl["cost_usd"])
    per_span = max(1, math.ceil(steps / MAX_TIMELINE_POINTS))
    spans = math.ceil(steps / per_span)

    def summed(x: Any) -> np.ndarray:
        a = np.asarray(x, dtype=np.float64)
        padded = np.zeros((spans * per_span, *a.shape[1:]))
        padded[:steps] = a
        return padded.reshape(spans, per_span, *a.shape[1:]).sum(axis=1)

    by_pool = {pool: summed(tl[f"cost_usd/{pool}"]) for pool in pool_purchase}
    by_purchase = {k: np.zeros(spans) for k in sorted(set(pool_purchase.values()))}
    for pool, series in by_pool.items():
        by_purchase[pool_purchase[pool]] += series
    names = list(result.summary["cost_by_tenant_usd"])
    tenant_cost = summed(tl["tenant_cost_usd"]).T
    tenant_idle = summed(tl["tenant_idle_usd"]).T
    interval_s = scenario.control_interval_s

    def listed(d: dict[str, Any]) -> dict[str, list[float]]:
        return {k: np.asarray(v, dtype=float).tolist() for k, v in d.items()}

    return CostTimeline(
        seed=int(task.seed),
        start_step=int(task.start_step),
        start_s=float(task.start_step * interval_s),
        span_s=float(per_span * interval_s),
        bill_usd=float(result.summary["cost_usd"]),
        by_pool_usd=listed(by_pool),
        by_purchase_usd=listed(by_purchase),
        by_tenant_usd=listed(top_and_other(dict(zip(names, tenant_cost, strict=True)), tenants)),
        idle_by_tenant_usd=listed(
            top_and_other(dict(zip(names, tenant_idle, strict=True)), tenants)
        ),
    )


def trace_info(sc: Scenario, *, replaced: bool) -> TraceInfo:
    wl = sc.workload
    return TraceInfo(wl.kind, wl.path, "--trace" if replaced else "scenario")


def held_out_info(sc: Scenario, split: Split, test_starts: Sequence[int]) -> HeldOut:
    return HeldOut(
        test_starts=[int(s) for s in test_starts],
        boundary_step=int(split.boundary_step),
        total_steps=int(split.total_steps),
        episode_steps=int(split.episode_steps),
        episode_hours=float(sc.episode_hours),
        control_interval_s=float(sc.control_interval_s),
    )


def log_evaluation(
    results: Results,
    artifacts: Sequence[Path],
    *,
    uri: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
) -> TrackedRun:
    """Log one evaluation as an MLflow run: params, namespaced metrics, and ``artifacts``.

    :param artifacts: files to attach (``results.json``, ``report.html``).
    :param uri: tracking URI (default: see :func:`~rlscale.common.tracking.tracking_uri`).
    :param experiment: experiment name, created when missing (default ``rlscale-evaluate``).
    :param run_name: default ``{scenario}__evaluate__{seeds}__{unix time}``.
    :raises TrackingError: MLflow missing, or the store refused the run.
    """
    from rlscale.common.tracking import EXPERIMENT_NAME, log_run

    name = run_name or f"{results.scenario}__evaluate__{len(results.seeds)}__{int(time.time())}"
    return log_run(
        experiment=experiment or EXPERIMENT_NAME,
        run_name=name,
        command="evaluate",
        params=results.mlflow_params(),
        metrics=results.mlflow_metrics(),
        artifacts=artifacts,
        uri=uri,
    )


def write_results(evaluation: Evaluation, out_dir: Path) -> Path:
    """Write ``results.json`` (strict JSON: NaN and infinities become null)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(
        json.dumps(json_safe(evaluation.results.to_json()), indent=2, allow_nan=False) + "\n"
    )
    return path


def json_safe(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
