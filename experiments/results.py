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

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlscale.envs.names import EPISODE_LATENCY_KEYS
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


def _get(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ResultsError(f"{_join(where, key)}: missing")
    return data[key]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ResultsError(f"{where}: expected an object, got {_kind(value)}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ResultsError(f"{where}: expected a list, got {_kind(value)}")
    return value


def _str(value: Any, where: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ResultsError(f"{where}: expected a string, got {_kind(value)}")
    return value


def _num(value: Any, where: str, *, optional: bool = False) -> Any:
    """A JSON number as a float (None stays None where ``optional``: NaN is written as null)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ResultsError(f"{where}: expected a number, got {_kind(value)}")
    return float(value)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ResultsError(f"{where}: expected an integer, got {_kind(value)}")
    return value


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r:.40}"


def _series(value: Any, where: str) -> dict[str, list[float]]:
    return {
        str(k): [_num(x, f"{where}.{k}[{i}]") for i, x in enumerate(_list(v, f"{where}.{k}"))]
        for k, v in _obj(value, where).items()
    }


@dataclass(frozen=True)
class MeanCI:
    """A metric over seeds: the mean and the two-sided 95% t-interval of the mean.

    ``mean`` is None when there was no value (or it was not finite); ``ci95`` is
    ``(None, None)`` when no spread can be estimated (one seed)."""

    mean: float | None
    ci95: tuple[float | None, float | None] = (None, None)

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
        return {"mean": self.mean, "ci95": list(self.ci95)}

    @classmethod
    def from_json(cls, data: Any, where: str = "") -> MeanCI:
        data = _obj(data, where)
        ci = _list(_get(data, "ci95", where), _join(where, "ci95"))
        if len(ci) != 2:
            raise ResultsError(f"{_join(where, 'ci95')}: expected [low, high], got {ci!r:.60}")
        lo, hi = (_num(x, f"{where}.ci95[{i}]", optional=True) for i, x in enumerate(ci))
        return cls(_num(_get(data, "mean", where), _join(where, "mean"), optional=True), (lo, hi))


NO_VALUE = MeanCI(None)
"""What a metric a policy has no value of reads as."""


@dataclass(frozen=True)
class TenantCosts:
    """A policy's per-tenant numbers: the top tenants by name and the rest as ``other``
    (:func:`other_key`), each a :class:`MeanCI` over seeds."""

    cost_usd: dict[str, MeanCI]
    """A tenant's share of the bill (see ``TENANT_NOTE`` in the report)."""
    idle_cost_usd: dict[str, MeanCI]
    """The part of it no tokens kept busy."""
    busy_gpu_hours: dict[str, MeanCI]
    """GPU-hours its tokens needed."""


@dataclass(frozen=True)
class PolicySummary:
    """One policy's metrics, ``metric -> MeanCI``; nested ones are keyed ``group/key``
    (``cost_by_pool_usd/h100``, ``cost_per_tenant_usd/alpha``), as in ``results.json``."""

    metrics: dict[str, MeanCI]

    def __getitem__(self, metric: str) -> MeanCI:
        return self.metrics[metric]

    def __contains__(self, metric: object) -> bool:
        return metric in self.metrics

    def get(self, metric: str) -> MeanCI:
        """The metric, or :data:`NO_VALUE` when this policy has none."""
        return self.metrics.get(metric, NO_VALUE)

    def mean(self, metric: str) -> float:
        """The metric's mean over seeds; NaN when it has none."""
        return self.get(metric).value

    def group(self, prefix: str) -> dict[str, MeanCI]:
        """The metrics keyed ``prefix/KEY``, as ``KEY -> MeanCI`` (pools, tenants)."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.metrics.items() if k.startswith(prefix + "/")}

    @property
    def tenants(self) -> TenantCosts:
        prefix = dict(zip(("cost", "idle", "busy"), TENANT_GROUPS, strict=True))
        return TenantCosts(
            self.group(prefix["cost"]), self.group(prefix["idle"]), self.group(prefix["busy"])
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v.to_json() for k, v in self.metrics.items()}

    @classmethod
    def from_json(cls, data: Any, where: str) -> PolicySummary:
        data = _obj(data, where)
        return cls({str(k): MeanCI.from_json(v, _join(where, k)) for k, v in data.items()})


@dataclass(frozen=True)
class CostTimeline:
    """One recorded episode's bill over time (seed, start step), in spans of ``span_s``; each
    split (pools, purchase options, tenants) sums to ``bill_usd``."""

    seed: int
    start_step: int
    start_s: float
    span_s: float
    bill_usd: float
    by_pool_usd: dict[str, list[float]]
    by_purchase_usd: dict[str, list[float]]
    by_tenant_usd: dict[str, list[float]]
    idle_by_tenant_usd: dict[str, list[float]]

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> CostTimeline:
        data = _obj(data, where)
        kw: dict[str, Any] = {}
        for f in fields(cls):
            value, at = _get(data, f.name, where), _join(where, f.name)
            if f.name in ("seed", "start_step"):
                kw[f.name] = _int(value, at)
            elif f.name.endswith("_usd") and f.name != "bill_usd":
                kw[f.name] = _series(value, at)
            else:
                kw[f.name] = _num(value, at)
        return cls(**kw)


@dataclass(frozen=True)
class HeldOut:
    """The windows an evaluation ran and the split they came from."""

    test_starts: list[int]
    """The held-out windows' start steps, in the grid's order."""
    boundary_step: int
    """Tuning and training use steps before this one."""
    total_steps: int
    episode_steps: int
    episode_hours: float
    control_interval_s: float

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Any, where: str = "held_out") -> HeldOut:
        data = _obj(data, where)
        starts = _list(_get(data, "test_starts", where), f"{where}.test_starts")
        return cls(
            test_starts=[_int(s, f"{where}.test_starts[{i}]") for i, s in enumerate(starts)],
            boundary_step=_int(_get(data, "boundary_step", where), f"{where}.boundary_step"),
            total_steps=_int(_get(data, "total_steps", where), f"{where}.total_steps"),
            episode_steps=_int(_get(data, "episode_steps", where), f"{where}.episode_steps"),
            episode_hours=_num(_get(data, "episode_hours", where), f"{where}.episode_hours"),
            control_interval_s=_num(
                _get(data, "control_interval_s", where), f"{where}.control_interval_s"
            ),
        )


@dataclass(frozen=True)
class TraceInfo:
    """The workload replayed: its format, file (None: synthetic), and whether ``--trace``
    replaced the scenario's own."""

    format: str
    path: str | None
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "path": self.path, "source": self.source}

    @classmethod
    def from_json(cls, data: Any, where: str = "trace") -> TraceInfo:
        data = _obj(data, where)
        return cls(
            _str(_get(data, "format", where), f"{where}.format"),
            _str(_get(data, "path", where), f"{where}.path", optional=True),
            _str(_get(data, "source", where), f"{where}.source"),
        )


@dataclass(frozen=True)
class PoolInfo:
    """A pool as the evaluation billed it."""

    purchase: str
    price_usd_h: float

    def to_json(self) -> dict[str, Any]:
        return {"purchase": self.purchase, "price_usd_h": self.price_usd_h}

    @classmethod
    def from_json(cls, data: Any, where: str) -> PoolInfo:
        data = _obj(data, where)
        return cls(
            _str(_get(data, "purchase", where), f"{where}.purchase"),
            _num(_get(data, "price_usd_h", where), f"{where}.price_usd_h"),
        )


@dataclass(frozen=True)
class Results:
    """What ``results.json`` holds, typed: :meth:`to_json` writes it, :meth:`from_json` (and
    :func:`load_results`) reads it back, a file of today's layout or of the unversioned one
    before it. Readers (the report, the promotion gate, the cost report, MLflow logging)
    read these fields, never the JSON."""

    scenario: str
    trace: TraceInfo
    seeds: list[int]
    windows: str
    """``all`` (every seed runs every held-out window) or ``cycle``."""
    held_out: HeldOut
    slo: SLOConfig
    pools: dict[str, PoolInfo]
    oracle: str | None
    """The oracle's label, when it ran."""
    oracle_cpu_s: MeanCI | None
    """CPU seconds of the oracle per episode window (its solve, tuning replays and episode)."""
    baselines: list[str]
    policies: dict[str, PolicySummary]
    """Per policy label, in the grid's order."""
    cost_timelines: dict[str, CostTimeline] | None
    """Per policy label, its recorded episode's bill over time; None in a file written before
    timelines were recorded."""
    top_tenants: list[str] | None
    """The tenants reported by name; the rest are summed as :func:`other_key` of them."""
    created_utc: str | None
    version: int = RESULTS_VERSION

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``results.json`` (NaN left as is: :func:`json_safe` nulls it)."""
        return {
            "version": self.version,
            "scenario": self.scenario,
            "trace": self.trace.to_json(),
            "seeds": list(self.seeds),
            "windows": self.windows,
            "held_out": self.held_out.to_json(),
            "slo": self.slo.model_dump(mode="json"),
            "pools": {k: v.to_json() for k, v in self.pools.items()},
            "oracle": self.oracle,
            "oracle_cpu_s": None if self.oracle_cpu_s is None else self.oracle_cpu_s.to_json(),
            "baselines": list(self.baselines),
            "policies": {k: v.to_json() for k, v in self.policies.items()},
            "cost_timelines": None
            if self.cost_timelines is None
            else {k: v.to_json() for k, v in self.cost_timelines.items()},
            "top_tenants": self.top_tenants,
            "created_utc": self.created_utc,
        }

    @classmethod
    def from_json(cls, data: Any) -> Results:
        """Read a ``results.json`` object.

        :raises ResultsError: another version, or a field missing or of the wrong type (the
            message names it).
        """
        from pydantic import ValidationError

        data = _obj(data, "results")
        version = data.get("version", RESULTS_VERSION)
        if version != RESULTS_VERSION:
            raise ResultsError(
                f"version: this rlscale reads results.json version {RESULTS_VERSION}, the file "
                f"is version {version!r}; rerun rlscale evaluate with this version"
            )
        try:
            slo = SLOConfig.model_validate(_obj(_get(data, "slo", ""), "slo"))
        except ValidationError as err:
            first = err.errors()[0]
            at = ".".join(str(x) for x in ("slo", *first["loc"]))
            raise ResultsError(f"{at}: {first['msg']}") from None
        timelines = data.get("cost_timelines")
        tenants = data.get("top_tenants")
        cpu = data.get("oracle_cpu_s")
        seeds = _list(_get(data, "seeds", ""), "seeds")
        return cls(
            scenario=_str(_get(data, "scenario", ""), "scenario"),
            trace=TraceInfo.from_json(_get(data, "trace", "")),
            seeds=[_int(s, f"seeds[{i}]") for i, s in enumerate(seeds)],
            windows=_str(_get(data, "windows", ""), "windows"),
            held_out=HeldOut.from_json(_get(data, "held_out", "")),
            slo=slo,
            pools={
                str(k): PoolInfo.from_json(v, f"pools.{k}")
                for k, v in _obj(_get(data, "pools", ""), "pools").items()
            },
            oracle=_str(data.get("oracle"), "oracle", optional=True),
            oracle_cpu_s=None if cpu is None else MeanCI.from_json(cpu, "oracle_cpu_s"),
            baselines=[
                _str(b, f"baselines[{i}]")
                for i, b in enumerate(_list(data.get("baselines", []), "baselines"))
            ],
            policies={
                str(k): PolicySummary.from_json(v, f"policies.{k}")
                for k, v in _obj(_get(data, "policies", ""), "policies").items()
            },
            cost_timelines=None
            if timelines is None
            else {
                str(k): CostTimeline.from_json(v, f"cost_timelines.{k}")
                for k, v in _obj(timelines, "cost_timelines").items()
            },
            top_tenants=None
            if tenants is None
            else [
                _str(t, f"top_tenants[{i}]") for i, t in enumerate(_list(tenants, "top_tenants"))
            ],
            created_utc=_str(data.get("created_utc"), "created_utc", optional=True),
        )

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
