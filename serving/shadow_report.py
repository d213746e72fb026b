"""``rlscale shadow-report``: how the recommendations compare with what production did.

Reads the shadow log (:mod:`rlscale.serving.shadow`) of one cluster and reports:

- agreement: per pool, the share of decisions whose recommended replicas equal the production
  scaler's; overall, the share where every pool agrees. Only decisions that carry a production
  decision for that pool are compared;
- the mean absolute difference (per pool, and of the per-decision sum over pools) and the
  decisions that differed most;
- an *estimate* of cost and SLO attainment had the recommendations been followed, against the
  production decisions, by replaying the recorded load through the simulator.

The replay: the recorded arrival rate is piecewise constant between decision timestamps (the
rate a request reports was measured over the interval that ends at its timestamp, so it fills
``[t_{i-1}, t_i)``; the last one also fills the interval after it), binned on the scenario's
sub-step grid with Poisson arrivals drawn by the simulator, and token sums from the scenario's
length distributions. Both replays start from the scenario's ``initial_replicas``, see the same
random stream, move at most ``max_step`` replicas per pool and step, and follow the decision in
force at each step. It is a model of the cluster, not the cluster: treat the numbers as a
comparison, not a forecast of the bill.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlscale.agents.base import ClusterState, Decision, Memory
from rlscale.envs.capacity import RequestMix
from rlscale.envs.scenario import Scenario, ScenarioError, load_scenario
from rlscale.envs.workload import (
    QUANTILE_LEVELS,
    WEEK_S,
    WorkloadSeries,
    causal_forecast_rps,
    length_quantiles,
)

TOP_DIFFERENCES = 20
"""Decisions listed in the largest-differences table."""

_EPOCH_TO_MONDAY_S = 3 * 86400.0
"""1970-01-01 was a Thursday: unix time plus three days is seconds since a Monday 00:00 UTC."""


class ShadowReportError(ScenarioError):
    """The shadow log cannot be reported on: missing, empty, or not matching the scenario."""


# --- reading the log ---------------------------------------------------------------------------


@dataclass
class ShadowRecords:
    """One cluster's decisions in time order (arrays are per decision)."""

    cluster: str
    clusters: dict[str, int]
    time_s: np.ndarray
    """Unix time of the metrics (the decision time where the request had none)."""
    rate_rps: np.ndarray
    """Recorded arrival rate; NaN where the request had none."""
    pools: list[str]
    recommended: dict[str, np.ndarray]
    """Recommended replicas per pool; NaN where the response did not name the pool."""
    production: dict[str, np.ndarray]
    """Production replicas per pool; NaN where not recorded."""
    warm_pool: dict[str, np.ndarray]
    decision_ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    policy_versions: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.time_s.shape[0])


def _num(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def choose_cluster(
    conn: sqlite3.Connection, path: Path, cluster: str | None
) -> tuple[str, dict[str, int]]:
    """``cluster``, checked to have decisions in the open shadow database ``conn`` (at
    ``path``), or when None the cluster with the most decisions; and every cluster's count.

    :raises ShadowReportError: no decisions at all, or none of ``cluster``.
    """
    counts = dict(
        conn.execute("SELECT cluster_id, COUNT(*) FROM decisions GROUP BY cluster_id").fetchall()
    )
    if not counts:
        raise ShadowReportError(f"shadow database {path} has no decisions")
    if cluster is None:
        return sorted(counts, key=lambda c: (-counts[c], c))[0], counts
    if cluster not in counts:
        raise ShadowReportError(
            f"cluster '{cluster}' has no decisions in {path}; clusters: {sorted(counts)}"
        )
    return cluster, counts


def decision_rows(
    db_path: str | Path, cluster: str | None, columns: str, order_by: str = "id"
) -> tuple[str, dict[str, int], list[tuple[Any, ...]]]:
    """``columns`` of the decisions of ``cluster`` (:func:`choose_cluster`) from the shadow
    database at ``db_path``, opened read-only, in ``order_by`` order; with every cluster's count.

    :raises ShadowReportError: no such file, not a shadow database, no rows, unknown cluster.
    """
    path = Path(db_path)
    if not path.is_file():
        raise ShadowReportError(f"no shadow database at {path}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            cluster, counts = choose_cluster(conn, path, cluster)
            rows = conn.execute(
                f"SELECT {columns} FROM decisions WHERE cluster_id = ? ORDER BY {order_by}",
                (cluster,),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise ShadowReportError(f"{path} is not a readable shadow database: {err}") from None
    return cluster, counts, rows


def read_shadow_log(db_path: str | Path, cluster: str | None = None) -> ShadowRecords:
    """The decisions of ``cluster`` (default: the cluster with the most rows).

    :raises ShadowReportError: no such file, not a shadow database, no rows, unknown cluster.
    """
    path = Path(db_path)
    cluster, counts, rows = decision_rows(
        path,
        cluster,
        "decision_id, decided_at_s, metrics_timestamp_s, policy_version, source, "
        "request_json, response_json, production_json",
    )

    parsed = []
    for did, decided, metrics_t, version, source, req_j, resp_j, prod_j in rows:
        req = json.loads(req_j)
        resp = json.loads(resp_j)
        prod = json.loads(prod_j) if prod_j else None
        t = metrics_t if metrics_t is not None else decided
        parsed.append((float(t), did, version, source, req, resp, prod))
    parsed.sort(key=lambda r: (r[0], r[1]))

    pools: list[str] = []
    for _, _, _, _, req, resp, prod in parsed:
        names = [p.get("name") for p in req.get("pools", [])]
        names += list(resp.get("replicas", {})) + list(prod or {})
        for name in names:
            if isinstance(name, str) and name not in pools:
                pools.append(name)

    def column(get) -> dict[str, np.ndarray]:
        return {
            p: np.array([_num(get(r).get(p)) if get(r) else math.nan for r in parsed])
            for p in pools
        }

    return ShadowRecords(
        cluster=cluster,
        clusters={str(k): int(v) for k, v in counts.items()},
        time_s=np.array([r[0] for r in parsed]),
        rate_rps=np.array([_num(r[4].get("arrival_rate_rps")) for r in parsed]),
        pools=pools,
        recommended=column(lambda r: r[5].get("replicas", {})),
        production=column(lambda r: r[6]),
        warm_pool=column(lambda r: r[5].get("warm_pool", {})),
        decision_ids=[r[1] for r in parsed],
        sources=[r[3] for r in parsed],
        policy_versions=[r[2] for r in parsed],
    )


# --- agreement ----------------------------------------------------------------------------------


def agreement_stats(rec: ShadowRecords, top: int = TOP_DIFFERENCES) -> dict[str, Any]:
    """Agreement and differences between recommended and production replicas.

    Per pool: over decisions with both numbers. Overall: over decisions with a production
    number for at least one pool, agreeing when every compared pool agrees; the overall mean
    absolute difference is the mean of the per-decision sum over compared pools.
    """
    per_pool: dict[str, dict[str, Any]] = {}
    diff = np.zeros(rec.n)
    compared_any = np.zeros(rec.n, dtype=bool)
    all_equal = np.ones(rec.n, dtype=bool)
    for p in rec.pools:
        r, q = rec.recommended[p], rec.production[p]
        both = np.isfinite(r) & np.isfinite(q)
        d = np.abs(r - q)
        n = int(both.sum())
        per_pool[p] = {
            "compared": n,
            "agreement": float(np.mean(d[both] == 0)) if n else None,
            "mean_abs_diff": float(np.mean(d[both])) if n else None,
            "max_abs_diff": float(np.max(d[both])) if n else None,
            "recommended_mean": _nanmean(r),
            "production_mean": _nanmean(q),
        }
        compared_any |= both
        all_equal &= ~both | (d == 0)
        diff += np.where(both, d, 0.0)
    n_cmp = int(compared_any.sum())
    order = sorted(np.flatnonzero(compared_any & (diff > 0)), key=lambda i: (-diff[i], i))[:top]
    largest = [
        {
            "decision_id": rec.decision_ids[i],
            "time_s": float(rec.time_s[i]),
            "offset_s": float(rec.time_s[i] - rec.time_s[0]),
            "arrival_rate_rps": _json_num(rec.rate_rps[i]),
            "total_abs_diff": float(diff[i]),
            "recommended": {p: _json_num(rec.recommended[p][i]) for p in rec.pools},
            "production": {p: _json_num(rec.production[p][i]) for p in rec.pools},
            "source": rec.sources[i],
        }
        for i in order
    ]
    return {
        "compared": n_cmp,
        "agreement": float(np.mean(all_equal[compared_any])) if n_cmp else None,
        "mean_abs_diff": float(np.mean(diff[compared_any])) if n_cmp else None,
        "per_pool": per_pool,
        "largest_differences": largest,
        "_agree": np.where(compared_any, all_equal.astype(float), np.nan),
    }


def _nanmean(x: np.ndarray) -> float | None:
    ok = np.isfinite(x)
    return float(np.mean(x[ok])) if ok.any() else None


def _json_num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# --- the replay ---------------------------------------------------------------------------------


def replay_workload(
    rec: ShadowRecords, scenario: Scenario, n_steps: int
) -> tuple[WorkloadSeries, int]:
    """The recorded load on the scenario's sub-step grid, ``n_steps`` decision steps long.

    Returns the series and the number of decisions whose rate was missing (they repeat the
    previous rate, or the next known one at the start).
    """
    rate = rec.rate_rps.copy()
    missing = int((~np.isfinite(rate)).sum())
    if missing == rec.n:
        raise ShadowReportError(
            f"no decision of cluster '{rec.cluster}' recorded arrival_rate_rps; nothing to replay"
        )
    # carry the last known rate forward, and the first known one back to the start
    idx = np.where(np.isfinite(rate), np.arange(rec.n), -1)
    idx = np.maximum.accumulate(idx)
    first = int(np.flatnonzero(np.isfinite(rate))[0])
    rate = rate[np.where(idx < 0, first, idx)]
    rate = np.maximum(rate, 0.0)

    dt = scenario.substep_s
    K = scenario.substeps_per_step
    n_bins = n_steps * K
    bin_t = (np.arange(n_bins) + 0.5) * dt
    rel = rec.time_s - rec.time_s[0]
    # bin in [t_{i-1}, t_i) gets rate i (measured over that interval); after t_last, the last
    which = np.minimum(np.searchsorted(rel, bin_t, side="right"), rec.n - 1)
    arrivals = rate[which] * dt
    wl = scenario.workload
    # the configured mix, as the decision service assumes it for its default capacity_rps
    mix = RequestMix.of_config(wl)
    levels = (np.arange(QUANTILE_LEVELS) + 0.5) / QUANTILE_LEVELS
    series = WorkloadSeries(
        name=f"shadow:{rec.cluster}",
        substep_s=float(dt),
        control_interval_s=float(scenario.control_interval_s),
        arrivals=arrivals,
        prompt_tokens=arrivals * mix.prompt_tokens,
        output_tokens=arrivals * mix.output_tokens,
        stochastic=True,
        forecast_rps=causal_forecast_rps(
            arrivals, substep_s=dt, control_interval_s=scenario.control_interval_s
        ),
        prompt_quantiles=np.asarray(length_quantiles(wl.prompt_tokens, levels), dtype=np.float64),
        tenant_names=("default",),
        tenant_token_share=np.ones((-(-n_bins // K), 1), dtype=np.float32),
        start_s_of_week=float((rec.time_s[0] + _EPOCH_TO_MONDAY_S) % WEEK_S),
        gaps=np.zeros(n_bins, dtype=bool),
    )
    return series, missing


@dataclass(frozen=True)
class SchedulePolicy:
    """Targets by time: the decision recorded last at or before the step's start.

    ``offsets_s`` are seconds since the episode start; ``replicas[i]`` / ``warm_pool[i]`` hold
    the targets from decision ``i`` (NaN: that pool keeps its current target).
    """

    offsets_s: np.ndarray
    replicas: dict[str, np.ndarray]
    warm_pool: dict[str, np.ndarray]
    name: str = "schedule"

    def initial_memory(self) -> Memory:
        return {}

    def decide(self, state: ClusterState, memory: Memory) -> tuple[Decision, Memory]:
        i = int(np.searchsorted(self.offsets_s, state.time_s + 1e-6, side="right")) - 1
        targets = {p.name: round(p.desired) for p in state.pools}
        warm: dict[str, int] = {}
        if i >= 0:
            for name, col in self.replicas.items():
                if math.isfinite(col[i]):
                    targets[name] = int(col[i])
            for name, col in self.warm_pool.items():
                if math.isfinite(col[i]):
                    warm[name] = int(col[i])
        return Decision(targets, warm, reason=f"{self.name} decision {i}"), memory

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "decisions": int(self.offsets_s.shape[0])}


def _carry_forward(col: np.ndarray) -> np.ndarray:
    idx = np.where(np.isfinite(col), np.arange(col.shape[0]), -1)
    idx = np.maximum.accumulate(idx)
    out = np.where(idx >= 0, col[np.maximum(idx, 0)], np.nan)
    return out


REPLAY_KEYS = ("cost_usd", "slo_attainment", "ttft_p95_s", "tpot_p95_s", "dropped", "completed")


def run_replays(
    rec: ShadowRecords, scenario: Scenario, seed: int = 0
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Replay the recorded load under the recommendations and the production decisions."""
    from rlscale.agents.observe import run_episode
    from rlscale.envs.simulator import ClusterSimulator

    ci = scenario.control_interval_s
    span = float(rec.time_s[-1] - rec.time_s[0])
    n_steps = math.floor(span / ci + 1e-9) + 1
    sc = scenario.model_copy(update={"episode_hours": n_steps * ci / 3600.0})
    series, missing = replay_workload(rec, sc, n_steps)
    sim = ClusterSimulator(sc, 1, workload=series)
    offsets = rec.time_s - rec.time_s[0]
    nan = {p: np.full(rec.n, np.nan) for p in rec.pools}
    policies = {
        "recommended": SchedulePolicy(offsets, rec.recommended, rec.warm_pool, "recommended")
    }
    has_prod = any(np.isfinite(rec.production[p]).any() for p in rec.pools)
    if has_prod:
        prod = {p: _carry_forward(rec.production[p]) for p in rec.pools}
        policies["production"] = SchedulePolicy(offsets, prod, nan, "production")
    results: dict[str, Any] = {}
    timelines: dict[str, dict[str, np.ndarray]] = {}
    for label, policy in policies.items():
        ep = run_episode(policy, sim, seed=seed, start_step=0, record=True)
        results[label] = {k: _json_num(float(ep.summary[k])) for k in REPLAY_KEYS}
        results[label]["cost_by_pool_usd"] = ep.summary["cost_by_pool_usd"]
        timelines[label] = ep.timeline
    replay = {
        "steps": n_steps,
        "hours": n_steps * ci / 3600.0,
        "control_interval_s": ci,
        "seed": seed,
        "decisions_without_rate": missing,
        "mean_rate_rps": series.mean_rps,
        "recommended": results["recommended"],
        "production": results.get("production"),
        "production_skipped": None
        if has_prod
        else "no decision carries a production_decision; only the recommendations were replayed",
        "caveat": (
            "Estimate: the recorded load replayed through the simulator (Poisson arrivals at the "
            "recorded rates, token lengths from the scenario), starting from the scenario's "
            "initial replicas and moving at most max_step replicas per pool and step. It "
            "compares the two schedules; it does not predict the bill."
        ),
    }
    if has_prod:
        replay["production_warm_pool"] = (
            "production decisions carry no warm-pool size: the production replay holds none"
        )
    return replay, timelines


# --- the report ---------------------------------------------------------------------------------


def _plot_agreement(rec: ShadowRecords, agree: np.ndarray) -> str:
    from matplotlib.figure import Figure

    from rlscale.common.html import png_data_uri

    hours = (rec.time_s - rec.time_s[0]) / 3600.0
    fig = Figure(figsize=(10, 4.5))
    ax_rate, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.4]})
    ax_rate.step(hours, rec.rate_rps, where="post", color="black", lw=1)
    ax_rate.set_ylabel("arrivals (req/s)")
    ok = np.isfinite(agree)
    if ok.any():
        edges = np.linspace(hours[0], hours[-1] + 1e-9, min(48, max(2, ok.sum() // 4)) + 1)
        b = np.clip(np.searchsorted(edges, hours, side="right") - 1, 0, len(edges) - 2)
        share = np.array(
            [
                np.mean(agree[(b == k) & ok]) if ((b == k) & ok).any() else np.nan
                for k in range(len(edges) - 1)
            ]
        )
        ax.stairs(
            share, edges, color="#1f77b4", lw=2, label="share agreeing per bucket", baseline=None
        )
        ax.axhline(float(np.mean(agree[ok])), color="gray", ls="--", lw=1, label="overall")
        ax.scatter(hours[ok], agree[ok], s=6, color="#d62728", alpha=0.4, label="decision")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("agreement")
    ax.set_xlabel("hours since the first decision")
    return png_data_uri(fig)


def _plot_pools(rec: ShadowRecords) -> str:
    from matplotlib.figure import Figure

    from rlscale.common.html import png_data_uri

    hours = (rec.time_s - rec.time_s[0]) / 3600.0
    n = len(rec.pools)
    fig = Figure(figsize=(10, 2.2 * n + 0.5))
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0])
    for ax, p in zip(axes, rec.pools, strict=True):
        ax.step(hours, rec.recommended[p], where="post", color="#1f77b4", label="recommended")
        ax.step(
            hours, rec.production[p], where="post", color="#d62728", ls="--", label="production"
        )
        ax.set_ylabel(f"{p}\nreplicas")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("hours since the first decision")
    return png_data_uri(fig)


def _plot_replay(replay: dict[str, Any], timelines: dict[str, dict[str, np.ndarray]]) -> str:
    from matplotlib.figure import Figure

    from rlscale.common.html import png_data_uri

    labels = list(timelines)
    colors = {"recommended": "#1f77b4", "production": "#d62728"}
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    ax_cost, ax_att, ax_cum = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 2]})
    costs = [replay[k]["cost_usd"] or 0.0 for k in labels]
    atts = [replay[k]["slo_attainment"] or 0.0 for k in labels]
    ax_cost.bar(labels, costs, color=[colors[k] for k in labels])
    ax_cost.set_title("cost (USD)", fontsize=9)
    ax_att.bar(labels, atts, color=[colors[k] for k in labels])
    ax_att.set_ylim(min([*atts, 1.0]) * 0.98 if atts else 0, 1.0)
    ax_att.set_title("SLO attainment", fontsize=9)
    ci_h = replay["control_interval_s"] / 3600.0
    for k in labels:
        c = np.cumsum(timelines[k]["cost_usd"])
        ax_cum.plot(np.arange(1, len(c) + 1) * ci_h, c, color=colors[k], label=k)
    for a in (ax_cost, ax_att):
        a.tick_params(axis="x", labelsize=8)
    ax_cum.set_title("cumulative cost (USD)", fontsize=9)
    ax_cum.set_xlabel("hours")
    ax_cum.legend(fontsize=8)
    return png_data_uri(fig)


def render_html(summary: dict[str, Any], figures: dict[str, str]) -> str:
    """The report as one self-contained HTML string."""
    from rlscale.common.html import REPORT_CSS, format_number, html_figure, html_table

    esc = html.escape
    ag = summary["agreement"]
    rp = summary["replay"]
    pools = summary["pools"]
    facts = {
        "Database": summary["db"],
        "Cluster": f"{summary['cluster']} ({summary['decisions']} decisions; clusters in the "
        f"log: {', '.join(f'{k} ({v})' for k, v in sorted(summary['clusters'].items()))})",
        "Scenario": summary["scenario"],
        "Span": f"{summary['span_hours']:.2f} h, from unix {summary['first_time_s']:.0f}",
        "Policy versions": ", ".join(summary["policy_versions"]),
        "Decisions compared": f"{ag['compared']} (with a production decision)",
        "Overall agreement": format_number(ag["agreement"], "pct")
        + " of decisions agree on every pool",
        "Mean |difference|": format_number(ag["mean_abs_diff"], "{:.3f}")
        + " replicas per decision, summed over pools",
    }
    facts_html = "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in facts.items())
    pool_rows = [
        [
            f"<td>{esc(p)}</td>",
            f"<td>{s['compared']}</td>",
            f"<td>{esc(format_number(s['agreement'], 'pct'))}</td>",
            f"<td>{esc(format_number(s['mean_abs_diff'], '{:.3f}'))}</td>",
            f"<td>{esc(format_number(s['max_abs_diff'], '{:.0f}'))}</td>",
            f"<td>{esc(format_number(s['recommended_mean'], '{:.2f}'))}</td>",
            f"<td>{esc(format_number(s['production_mean'], '{:.2f}'))}</td>",
        ]
        for p, s in ag["per_pool"].items()
    ]
    pool_table = html_table(
        ["Pool", "Compared", "Agreement", "Mean |diff|", "Max |diff|", "Mean rec.", "Mean prod."],
        pool_rows,
    )
    diff_rows = [
        [
            f"<td>{d['offset_s'] / 3600:.3f}</td>",
            f"<td>{esc(format_number(d['arrival_rate_rps'], '{:.2f}'))}</td>",
            *[
                f"<td>{esc(format_number(d['recommended'][p], '{:.0f}'))} / "
                f"{esc(format_number(d['production'][p], '{:.0f}'))}</td>"
                for p in pools
            ],
            f"<td>{d['total_abs_diff']:.0f}</td>",
            f"<td>{esc(d['source'])}</td>",
            f"<td><code>{esc(d['decision_id'])}</code></td>",
        ]
        for d in ag["largest_differences"]
    ]
    diff_table = (
        html_table(
            [
                "Hour",
                "Arrivals (req/s)",
                *[f"{p} rec. / prod." for p in pools],
                "|diff|",
                "Source",
                "Decision id",
            ],
            diff_rows,
        )
        if diff_rows
        else "<p>No decision differed.</p>"
    )
    labels = [k for k in ("recommended", "production") if rp.get(k)]
    replay_rows = [
        [f"<td>{esc(k)}</td>"]
        + [
            f"<td>{esc(format_number(rp[k][m], f))}</td>"
            for m, f in (
                ("cost_usd", "{:.2f}"),
                ("slo_attainment", "pct"),
                ("ttft_p95_s", "{:.3f}"),
                ("tpot_p95_s", "{:.4f}"),
                ("dropped", "{:.0f}"),
            )
        ]
        for k in labels
    ]
    replay_table = html_table(
        ["Followed", "Cost (USD)", "SLO attainment", "TTFT p95 (s)", "TPOT p95 (s)", "Dropped"],
        replay_rows,
    )
    notes = [rp["caveat"]]
    for key in ("production_skipped", "production_warm_pool"):
        if rp.get(key):
            notes.append(rp[key])
    if rp["decisions_without_rate"]:
        notes.append(
            f"{rp['decisions_without_rate']} decisions recorded no arrival rate; the previous "
            "rate was carried over them."
        )
    notes_html = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>rlscale shadow report: {esc(summary['cluster'])}</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
        f"<h1>Shadow report: {esc(summary['cluster'])}</h1>",
        f'<section id="setup"><dl>{facts_html}</dl></section>',
        html_figure(
            "agreement",
            "Agreement over time",
            figures["agreement"],
            "Top: the recorded arrival rate. Bottom: the share of decisions whose recommendation "
            "equals the production decision on every pool, per time bucket (dots: single "
            "decisions, 1 = agree); the dashed line is the overall share.",
        ),
        '<section id="pools-table"><h2>Agreement by pool</h2>',
        pool_table,
        "</section>",
        html_figure(
            "pools",
            "Recommended against production replicas",
            figures["pools"],
            "Target replicas per pool at each decision: the recommendation (solid) and what the "
            "production scaler chose (dashed).",
        ),
        f'<section id="differences"><h2>Largest differences (top {TOP_DIFFERENCES})</h2>',
        diff_table,
        "</section>",
        html_figure(
            "replay",
            "Estimated cost and SLO attainment",
            figures["replay"],
            "The recorded load replayed through the simulator under each schedule (same random "
            "stream). An estimate, see the notes below.",
        ),
        '<section id="replay-table"><h2>Replay (estimate)</h2>',
        replay_table,
        notes_html,
        "</section>",
        _spend_section(summary.get("spend")),
        "</body></html>",
    ]
    return "\n".join(parts)


def shadow_report(
    db_path: str | Path,
    scenario: str | Path | Scenario,
    *,
    cluster: str | None = None,
    out_dir: str | Path,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare the recorded recommendations with production; write HTML and JSON.

    Writes ``out_dir/shadow_report.html`` (self-contained) and ``out_dir/shadow_summary.json``.

    :param db_path: the shadow database (``rlscale serve --shadow-db``).
    :param scenario: the scenario describing the live cluster's pools (name, path or object).
    :param cluster: the cluster to report on; default the one with the most decisions.
    :param out_dir: where the files go (created).
    :param seed: seed of the replay's random stream (both replays share it).
    :return: the summary (what the JSON file holds).
    :raises ShadowReportError: a missing database, an empty log, an unknown cluster, a pool
        the scenario does not have, or no recorded arrival rate.
    """
    sc = load_scenario(scenario)
    rec = read_shadow_log(db_path, cluster)
    known = [p.name for p in sc.pools]
    unknown = [p for p in rec.pools if p not in known]
    if unknown:
        raise ShadowReportError(
            f"the shadow log of cluster '{rec.cluster}' names pools {unknown} that scenario "
            f"'{sc.name}' does not have (it has {known}); pass the live cluster's scenario"
        )
    ag = agreement_stats(rec)
    agree = ag.pop("_agree")
    replay, timelines = run_replays(rec, sc, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path = out / "shadow_report.html"
    json_path = out / "shadow_summary.json"
    summary: dict[str, Any] = {
        "db": str(db_path),
        "scenario": sc.name,
        "cluster": rec.cluster,
        "clusters": rec.clusters,
        "decisions": rec.n,
        "first_time_s": float(rec.time_s[0]),
        "last_time_s": float(rec.time_s[-1]),
        "span_hours": float(rec.time_s[-1] - rec.time_s[0]) / 3600.0,
        "pools": rec.pools,
        "policy_versions": sorted(set(rec.policy_versions)),
        "fallback_decisions": sum(s == "fallback" for s in rec.sources),
        "agreement": ag,
        "replay": replay,
        "files": {"html": str(html_path), "json": str(json_path)},
    }
    summary["spend"] = metered_spend(db_path, sc, rec.cluster)
    figures = {
        "agreement": _plot_agreement(rec, agree),
        "pools": _plot_pools(rec),
        "replay": _plot_replay(replay, timelines),
    }
    html_path.write_text(render_html(summary, figures), encoding="utf-8")
    json_path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return summary


TOP_TENANTS = 10
"""Tenants the spend table names; the rest are summed as ``other``."""


def metered_spend(db_path: str | Path, sc: Scenario, cluster: str) -> dict[str, Any] | None:
    """What the cluster's recorded replicas cost, by pool, purchase option and tenant with the
    idle part (:func:`rlscale.serving.shadow_cost.shadow_costs`, without the timeline); None
    when fewer than two dated observations leave nothing to meter."""
    from rlscale.experiments.cost_report import limit_tenants
    from rlscale.serving.shadow_cost import shadow_costs

    try:
        entry = shadow_costs(db_path, sc, cluster=cluster)
    except ShadowReportError:
        return None
    entry = limit_tenants({"entries": {cluster: entry}}, TOP_TENANTS)["entries"][cluster]
    entry.pop("timeline")
    return entry


def _spend_section(spend: dict[str, Any] | None) -> str:
    if spend is None:
        return (
            '<section id="spend"><h2>Metered spend by tenant</h2><p class="note">Fewer than '
            "two dated decisions: nothing to meter.</p></section>"
        )
    from rlscale.experiments.cost_report import tenant_rows_table

    note = (
        f"{spend['bill_usd']:.4f} USD metered from the replicas and prices the decisions "
        "reported, as the service meters them. Tenants pay by their share of the requests "
        "(per-tenant rates from the metrics source; '(unallocated)' where none were given). "
        "The idle share is the part of their cost the load did not need: ready capacity "
        "beyond the arrival rate, the warm pool, starting and draining replicas."
    )
    if spend.get("unmetered_s"):
        note += f" {spend['unmetered_s']:.0f} s beyond the staleness bound were not metered."
    return (
        '<section id="spend"><h2>Metered spend by tenant</h2>'
        + tenant_rows_table(spend)
        + f'<p class="note">{html.escape(note)}</p></section>'
    )


# --- command line -------------------------------------------------------------------------------


def add_shadow_report_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``shadow-report`` subcommand."""
    p = sub.add_parser(
        "shadow-report",
        help="compare shadow-mode recommendations with production decisions",
        description=(
            "Read a shadow database (rlscale serve --shadow-db): agreement of the recommendations "
            "with the production scaler over time, where and by how much they differed, and an "
            "estimate of cost and SLO attainment had the recommendations been followed, by "
            "replaying the recorded load through the simulator. Writes shadow_report.html and "
            "shadow_summary.json to --out."
        ),
    )
    p.add_argument("--db", type=Path, required=True, help="the shadow SQLite database")
    p.add_argument(
        "--scenario", required=True, help="shipped scenario name or YAML path of the live cluster"
    )
    p.add_argument(
        "--cluster", default=None, help="cluster id to report on (default: the one with most rows)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the replay (default 0)")
    p.add_argument("--out", type=Path, default=Path("out/shadow-report"))
    return p


def run_shadow_report(args: argparse.Namespace) -> int:
    """``rlscale shadow-report``: prints one JSON line of the headline numbers.

    :raises ShadowReportError: (a ScenarioError, which ``rlscale`` turns into exit code 2).
    """
    s = shadow_report(
        args.db, args.scenario, cluster=args.cluster, out_dir=args.out, seed=args.seed
    )
    rp = s["replay"]
    print(
        json.dumps(
            {
                "cluster": s["cluster"],
                "decisions": s["decisions"],
                "agreement": s["agreement"]["agreement"],
                "mean_abs_diff": s["agreement"]["mean_abs_diff"],
                "recommended": {k: rp["recommended"][k] for k in ("cost_usd", "slo_attainment")},
                "production": None
                if rp["production"] is None
                else {k: rp["production"][k] for k in ("cost_usd", "slo_attainment")},
                "html": s["files"]["html"],
            }
        )
    )
    return 0
