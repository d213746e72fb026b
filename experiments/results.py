"""What an evaluation produced, and how episodes become it: aggregation over seeds.

:func:`summarize` turns the grid's episodes (each an :class:`EpisodeTask` with its
:class:`~rlscale.agents.observe.EpisodeResult`, in any order) into an :class:`Evaluation`:
per policy and metric the mean over a seed's windows, then the mean and 95% interval over
seeds. The episodes are put in the grid's order first, so the numbers do not depend on the
order in which a backend finished them. The report (``experiments/report.py``), the promotion
gate and MLflow logging read an :class:`Evaluation`; nothing here runs a simulator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlscale.envs.names import EPISODE_LATENCY_KEYS

if TYPE_CHECKING:
    import numpy as np

    from rlscale.agents.observe import EpisodeResult
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
    # request classes (only with batch work): per-class cost, the batch requests' accounting
    # and the share of them completed within their deadline
    for cls, cost in summary.get("cost_by_class_usd", {}).items():
        flat[f"cost_by_class_usd/{cls}"] = float(cost)
    for key, value in summary.get("batch", {}).items():
        flat[f"batch/{key}"] = float(value)
    if "batch_attainment" in summary:
        flat["batch_attainment"] = float(summary["batch_attainment"])
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


@dataclass
class Evaluation:
    """What an evaluation produced: the JSON results and what the report plots besides."""

    results: dict[str, Any]
    """Exactly what ``results.json`` holds."""
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
    cost_timelines: dict[str, dict[str, Any]] = {}
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
    results = {
        "scenario": scenario.name,
        "trace": trace_info(scenario, replaced=trace_replaced),
        "seeds": [int(s) for s in seeds],
        "windows": windows,
        "held_out": held_out_info(scenario, split, test_starts),
        "slo": scenario.slo.model_dump(mode="json"),
        "pools": {
            p.name: {"purchase": p.purchase, "price_usd_h": p.price_usd_h} for p in scenario.pools
        },
        "oracle": oracle,
        "oracle_cpu_s": mean_ci95(oracle_cpu_s) if oracle_cpu_s else None,
        "baselines": [k for k, v in kinds.items() if v is PolicyKind.BASELINE],
        "policies": {label: aggregate(by_seed) for label, by_seed in by_policy.items()},
        "cost_timelines": cost_timelines,
        "top_tenants": tenants,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
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
) -> dict[str, Any]:
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

    return {
        "seed": task.seed,
        "start_step": task.start_step,
        "start_s": task.start_step * interval_s,
        "span_s": per_span * interval_s,
        "bill_usd": float(result.summary["cost_usd"]),
        "by_pool_usd": listed(by_pool),
        "by_purchase_usd": listed(by_purchase),
        "by_tenant_usd": listed(top_and_other(dict(zip(names, tenant_cost, strict=True)), tenants)),
        "idle_by_tenant_usd": listed(
            top_and_other(dict(zip(names, tenant_idle, strict=True)), tenants)
        ),
    }


def trace_info(sc: Scenario, *, replaced: bool) -> dict[str, Any]:
    wl = sc.workload
    return {
        "format": wl.kind,
        "path": wl.path,
        "source": "--trace" if replaced else "scenario",
    }


def held_out_info(sc: Scenario, split: Split, test_starts: Sequence[int]) -> dict[str, Any]:
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
    path.write_text(json.dumps(json_safe(evaluation.results), indent=2, allow_nan=False) + "\n")
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
