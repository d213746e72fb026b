"""A live cluster's bill from its shadow log: by tenant, pool and purchase option over time.

The shadow log (:mod:`rlscale.serving.shadow`) keeps every decision's request: the replicas
each pool ran by state, their prices, the arrival rate and, when the metrics source gives
them, the request rate per tenant. :func:`shadow_costs` meters them as the service does
(:class:`~rlscale.serving.budgets.SpendMeter`): each observation's cost rate holds until the
next observation of the cluster, for at most ``max_gap_s`` (the staleness bound; time beyond
it is reported as unmetered, not guessed), and a snapshot no newer than the last one adds
nothing. Requests are read by the service's own reader (:func:`~rlscale.serving.inputs.
read_request`), so defaults and clipping are the service's.

The split (:mod:`rlscale.envs.metering`): busy is the share of the ready replicas' capacity
the load needed (arrival rate after the response cache over the ready replicas' saturation
throughput); the rest is idle. Both go to tenants by request share; an interval without
per-tenant rates goes to :data:`UNALLOCATED`, as the service's counters have it. An
interval without a usable arrival rate has no busy/idle split: its cost counts in
``split_unknown_usd``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from rlscale.envs.capacity import scenario_capacities_rps
from rlscale.envs.metering import busy_usd
from rlscale.envs.scenario import Scenario, load_scenario
from rlscale.experiments.results import MAX_TIMELINE_POINTS
from rlscale.serving.budgets import pool_cost_rates_usd_h, tenant_shares
from rlscale.serving.inputs import pool_current_replicas, read_request
from rlscale.serving.limits import STALENESS_INTERVALS
from rlscale.serving.schemas import RecommendationRequest
from rlscale.serving.shadow_report import ShadowReportError, decision_rows

UNALLOCATED = "(unallocated)"
"""Where spend goes while the cluster reported no per-tenant request rates."""


@dataclass
class _Segment:
    """One metered stretch: a cluster state's cost rate held from ``start_s`` to ``end_s``."""

    start_s: float
    end_s: float
    pool_usd_h: np.ndarray
    busy_usd_h: float | None
    shares: dict[str, float] | None


def _rows(db_path: Path, cluster: str | None) -> tuple[str, list[tuple[float, str]]]:
    """The chosen cluster and its requests, oldest metrics first."""
    cluster, _, rows = decision_rows(
        db_path, cluster, "COALESCE(metrics_timestamp_s, decided_at_s), request_json", "1, id"
    )
    return cluster, rows


def _segments(
    rows: list[tuple[float, str]], scenario: Scenario, max_gap_s: float
) -> tuple[list[_Segment], float]:
    """The metered segments of ``rows`` and the seconds left unmetered."""
    holding = {p.name: p.warm_holding_usd_h for p in scenario.pools}
    names = [p.name for p in scenario.pools]
    caps = scenario_capacities_rps(scenario)
    keep = 1.0 - scenario.workload.cache_hit_ratio
    last_known: dict[str, int] = {}
    observed: list[tuple[float, np.ndarray, float | None, dict[str, float] | None]] = []
    for k, (time_s, text) in enumerate(rows):
        try:
            request = RecommendationRequest.model_validate(json.loads(text))
        except (ValueError, ValidationError) as err:
            raise ShadowReportError(f"decision {k} of the shadow log is malformed: {err}") from None
        for pm in request.pools:
            count = pool_current_replicas(pm)
            if count is not None:
                last_known[pm.name] = count
        read = read_request(
            request,
            now=float(time_s),
            scenario=scenario,
            capacity_rps=caps,
            last_known_good=last_known,
            max_staleness_s=math.inf,
        )
        t = read.metrics_time_s
        if not math.isfinite(t) or (observed and t <= observed[-1][0]):
            continue  # undated, or no newer than the last: meters nothing, as in the service
        rates = pool_cost_rates_usd_h(read.state, holding)
        pool_usd_h = np.array([rates[n] for n in names])
        busy = None
        if read.rate_ok:
            pools = read.state.pools
            capacity = sum(p.ready * p.capacity_rps for p in pools)
            load = read.state.arrival_rate_rps * keep
            need = min(1.0, load / capacity) if capacity > 0 else 0.0
            # an hour at this state: busy replica-seconds, priced, capped by the pool's cost
            usd_per_h, _ = busy_usd(
                pool_usd_h,
                np.full(len(pools), np.inf),
                np.array([need * p.ready * 3600.0 for p in pools]),
                np.array([p.price_usd_h for p in pools]),
            )
            busy = float(usd_per_h)
        observed.append((t, pool_usd_h, busy, tenant_shares(request.tenant_rates_rps)))
    segments = []
    unmetered_s = 0.0
    for (t, pool_usd_h, busy, shares), nxt in itertools.pairwise(observed):
        gap = nxt[0] - t
        end = t + min(gap, max_gap_s)
        unmetered_s += gap - (end - t)
        segments.append(_Segment(t, end, pool_usd_h, busy, shares))
    return segments, unmetered_s


def shadow_costs(
    db_path: str | Path,
    scenario: Scenario,
    *,
    cluster: str | None = None,
    max_gap_s: float | None = None,
) -> dict[str, Any]:
    """One cluster's metered bill from a shadow log, as a cost-report entry
    (:mod:`rlscale.experiments.cost_report`): totals and a timeline by pool, purchase option
    and tenant, with each tenant's idle part.

    :param cluster: the cluster to report (default: the one with the most decisions).
    :param max_gap_s: a gap between observations is metered for at most this long (default:
        the service's staleness bound, ``STALENESS_INTERVALS`` control intervals).
    :raises ShadowReportError: no such file, not a shadow database, no decisions of the
        cluster, a malformed request, or fewer than two dated observations.
    """
    path = Path(db_path)
    if max_gap_s is None:
        max_gap_s = STALENESS_INTERVALS * scenario.control_interval_s
    if not max_gap_s > 0:
        raise ShadowReportError(f"max_gap_s must be > 0, got {max_gap_s}")
    name, rows = _rows(path, cluster)
    segments, unmetered_s = _segments(rows, scenario, max_gap_s)
    if not segments:
        raise ShadowReportError(
            f"cluster '{name}' in {path} has fewer than two dated observations: nothing to meter"
        )
    pools = [p.name for p in scenario.pools]
    purchase = {p.name: p.purchase for p in scenario.pools}
    tenants: list[str] = []
    for seg in segments:
        keys = [UNALLOCATED] if seg.shares is None else list(seg.shares)
        tenants += [t for t in keys if t not in tenants]
    t0 = segments[0].start_s
    span_s = max(
        scenario.control_interval_s, math.ceil((segments[-1].end_s - t0) / MAX_TIMELINE_POINTS)
    )
    n_spans = max(1, math.ceil((segments[-1].end_s - t0) / span_s))
    by_pool = np.zeros((n_spans, len(pools)))
    tenant_cost = np.zeros((n_spans, len(tenants)))
    tenant_idle = np.zeros((n_spans, len(tenants)))
    split_unknown = 0.0
    index = {t: k for k, t in enumerate(tenants)}
    for seg in segments:
        share = np.zeros(len(tenants))
        for t, s in ({UNALLOCATED: 1.0} if seg.shares is None else seg.shares).items():
            share[index[t]] = s
        idle_usd_h = (
            None if seg.busy_usd_h is None else max(seg.pool_usd_h.sum() - seg.busy_usd_h, 0.0)
        )
        for k, hours in _overlaps(seg.start_s, seg.end_s, t0, span_s, n_spans):
            by_pool[k] += seg.pool_usd_h * hours
            tenant_cost[k] += seg.pool_usd_h.sum() * hours * share
            if idle_usd_h is None:
                split_unknown += seg.pool_usd_h.sum() * hours
            else:
                tenant_idle[k] += idle_usd_h * hours * share
    by_purchase = {k: np.zeros(n_spans) for k in sorted(set(purchase.values()))}
    for j, pool in enumerate(pools):
        by_purchase[purchase[pool]] += by_pool[:, j]
    bill = float(by_pool.sum())
    return {
        "kind": "cluster",
        "bill_usd": bill,
        "by_pool_usd": {p: float(by_pool[:, j].sum()) for j, p in enumerate(pools)},
        "by_purchase_usd": {k: float(v.sum()) for k, v in by_purchase.items()},
        "tenants": {
            t: {
                "cost_usd": float(tenant_cost[:, k].sum()),
                "idle_usd": float(tenant_idle[:, k].sum()),
            }
            for k, t in enumerate(tenants)
        },
        "other_tenants": None,
        "split_unknown_usd": split_unknown,
        "unmetered_s": unmetered_s,
        "timeline": {
            "start_s": t0,
            "span_s": float(span_s),
            "bill_usd": bill,
            "by_pool_usd": {p: by_pool[:, j].tolist() for j, p in enumerate(pools)},
            "by_purchase_usd": {k: v.tolist() for k, v in by_purchase.items()},
            "by_tenant_usd": {t: tenant_cost[:, k].tolist() for k, t in enumerate(tenants)},
            "idle_by_tenant_usd": {t: tenant_idle[:, k].tolist() for k, t in enumerate(tenants)},
        },
        "cluster": name,
        "metered_from_s": t0,
        "metered_to_s": segments[-1].end_s,
    }


def _overlaps(
    start_s: float, end_s: float, t0: float, span_s: float, n_spans: int
) -> list[tuple[int, float]]:
    """The spans ``[start_s, end_s)`` covers, each with the hours it covers of it."""
    out = []
    k = min(int((start_s - t0) // span_s), n_spans - 1)
    while start_s < end_s:
        stop = end_s if k == n_spans - 1 else min(end_s, t0 + (k + 1) * span_s)
        out.append((k, (stop - start_s) / 3600.0))
        start_s, k = stop, k + 1
    return out


def run_cost_report(args: argparse.Namespace) -> int:
    """``rlscale cost-report`` (arguments: :func:`~rlscale.experiments.cost_report.
    add_cost_report_parser`): writes the report, prints one JSON line of its totals.

    :raises ScenarioError: a missing or malformed input (``rlscale`` exits with code 2).
    """
    from rlscale.experiments.cost_report import (
        CostReportError,
        from_results,
        limit_tenants,
        write_cost_report,
    )

    if args.results is not None:
        extra = [f for f in ("scenario", "cluster", "max_gap_s") if getattr(args, f) is not None]
        if extra:
            flags = ", ".join("--" + f.replace("_", "-") for f in extra)
            raise CostReportError(f"{flags} go with --shadow, not --results")
        report = from_results(args.results)
    else:
        if args.scenario is None:
            raise CostReportError("--shadow needs --scenario: the scenario the service ran")
        scenario = load_scenario(args.scenario)
        entry = shadow_costs(args.shadow, scenario, cluster=args.cluster, max_gap_s=args.max_gap_s)
        report = {
            "source": {
                "kind": "shadow",
                "path": str(args.shadow),
                "scenario": scenario.name,
                "cluster": entry["cluster"],
                "totals": "metered from the replicas and prices each decision's request reported",
            },
            "entries": {entry["cluster"]: entry},
        }
    report = limit_tenants(report, args.top_tenants)
    json_path, html_path = write_cost_report(report, args.out)
    print(
        json.dumps(
            {
                "bill_usd": {k: e["bill_usd"] for k, e in report["entries"].items()},
                "json": str(json_path),
                "html": str(html_path),
            }
        )
    )
    return 0
