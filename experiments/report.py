"""The evaluation report: one self-contained HTML file with plots and tables.

Plots are PNGs drawn with matplotlib's Agg canvas (no display, no pyplot global state) and
embedded as base64 ``data:`` URIs, so the file can be mailed, attached to an MLflow run, or
opened offline; it loads nothing from anywhere. Every piece of text that comes from input
(policy labels, pool and tenant names, paths) is HTML-escaped.

Sections: what was run; the load against ready capacity of each policy over one held-out
window; with budgets, spend against each budget and where a cap bound
(:mod:`rlscale.experiments.budget_report`); cost by pool and by purchase option; cost
against SLO attainment with the oracle marked; the gap table (each policy's cost over the
oracle's, and the share of the best baseline's gap to the oracle it closes); the metric
table with 95% intervals; GPU-hours by
pool; cost per tenant; and how the numbers were made.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rlscale.common.html import REPORT_CSS, format_number, html_figure, html_table, png_data_uri
from rlscale.envs.names import BATCH_ATTAINMENT, BATCH_COUNTS, COST_BY_CLASS_USD
from rlscale.experiments.budget_report import budget_sections
from rlscale.experiments.results import NO_VALUE, Evaluation, MeanCI, Results, load_results

PURCHASE_LABELS = {"on_demand": "on demand", "spot": "spot"}
PURCHASE_COLORS = {"on_demand": "#1f77b4", "spot": "#ff7f0e"}
ORACLE_COLOR = "#000000"
_POLICY_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
_POOL_PALETTE = ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd", "#8c8c8c")

SUMMARY_COLUMNS = (
    ("cost_usd", "Cost (USD)", "{:.2f}"),
    ("cost_per_million_tokens_usd", "USD / M tokens", "{:.3f}"),
    ("slo_attainment", "SLO attainment", "pct"),
    ("ttft_p50_s", "TTFT p50 (s)", "{:.3f}"),
    ("ttft_p95_s", "TTFT p95 (s)", "{:.3f}"),
    ("ttft_p99_s", "TTFT p99 (s)", "{:.3f}"),
    ("tpot_p50_s", "TPOT p50 (s)", "{:.4f}"),
    ("tpot_p95_s", "TPOT p95 (s)", "{:.4f}"),
    ("tpot_p99_s", "TPOT p99 (s)", "{:.4f}"),
    ("dropped", "Dropped", "{:.0f}"),
    ("scale_events", "Scale events", "{:.1f}"),
    ("cold_starts", "Cold starts", "{:.1f}"),
    ("preemptions", "Preemptions", "{:.1f}"),
)


TENANT_NOTE = (
    "Each tenant pays for the GPU time its tokens needed (at a replica's saturation throughput "
    "for the workload's request mix) and, in proportion to that, for the rest of the bill: "
    "capacity the load did not need, the warm pool, cold starts and draining replicas (the "
    "idle share); the tenants' costs sum to the bill. Tenants beyond the top ones are summed "
    "as 'other'."
)
"""What the per-tenant tables say about the allocation (rlscale.envs.metering)."""


# --- figures -------------------------------------------------------------------------------------


def policy_colors(labels: Sequence[str], oracle: str | None) -> dict[str, str]:
    """A fixed color per policy, the oracle in black, so every plot reads the same way."""
    colors: dict[str, str] = {}
    k = 0
    for label in labels:
        if label == oracle:
            colors[label] = ORACLE_COLOR
        else:
            colors[label] = _POLICY_PALETTE[k % len(_POLICY_PALETTE)]
            k += 1
    return colors


def _mean(results: Results, policy: str, metric: str) -> float:
    return results.policies[policy].mean(metric)


def _ci(results: Results, policy: str, metric: str) -> tuple[float, float] | None:
    return results.policies[policy].get(metric).interval


def plot_load_capacity(ev: Evaluation) -> str:
    """Small multiples: arrivals against ready capacity (stacked by pool), one per policy."""
    res = ev.results
    labels = [p for p in res.policies if p in ev.timelines]
    pools = list(res.pools)
    pool_colors = {p: _POOL_PALETTE[i % len(_POOL_PALETTE)] for i, p in enumerate(pools)}
    n = max(len(labels), 1)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.6 * ncols, 2.9 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    # a one-hour trace reads better in minutes, a day in hours
    short = res.held_out.episode_hours <= 3.0
    step_t = res.held_out.control_interval_s / (60.0 if short else 3600.0)
    t_unit = "minutes" if short else "hours"
    ymax = 0.0
    for ax, label in zip(axes.flat, labels, strict=False):
        tl = ev.timelines[label]
        arrivals = np.asarray(tl["arrival_rps"], dtype=float)
        t = (np.arange(arrivals.size) + 1) * step_t
        caps = [
            np.asarray(tl[f"ready/{p}"], dtype=float) * ev.pool_capacity_rps.get(p, 0.0)
            for p in pools
        ]
        ax.stackplot(
            t,
            *caps,
            labels=[f"ready capacity: {p}" for p in pools],
            colors=[pool_colors[p] for p in pools],
            alpha=0.45,
            step="post",
        )
        ax.plot(t, arrivals, color="black", lw=1.2, label="arrivals")
        ax.set_title(label)
        ymax = max(ymax, float(np.nanmax(arrivals, initial=0.0)), float(sum(caps).max()))
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel(f"{t_unit} into the held-out window")
    for ax in axes[:, 0]:
        ax.set_ylabel("requests / s")
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_visible(False)
    if ymax > 0:
        axes[0, 0].set_ylim(0, ymax * 1.08)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 4), fontsize=9)
    start = res.held_out.test_starts[0]
    fig.suptitle(
        f"Load against ready capacity (seed {res.seeds[0]}, held-out window at step {start})"
    )
    return png_data_uri(fig)


def plot_cost_breakdown(ev: Evaluation) -> str:
    """Stacked bars of mean cost per episode: by pool (left) and by purchase option (right)."""
    res = ev.results
    labels = list(res.policies)
    pools = list(res.pools)
    purchases = sorted({p.purchase for p in res.pools.values()})
    pool_colors = {p: _POOL_PALETTE[i % len(_POOL_PALETTE)] for i, p in enumerate(pools)}
    fig = Figure(figsize=(max(8.0, 1.5 * len(labels) + 5.0), 4.2), layout="constrained")
    ax_pool, ax_buy = fig.subplots(1, 2, sharey=True)
    x = np.arange(len(labels))
    groups = (
        (ax_pool, "cost_by_pool_usd", pools, pool_colors, "By pool"),
        (
            ax_buy,
            "cost_by_purchase_usd",
            purchases,
            PURCHASE_COLORS,
            "By purchase option",
        ),
    )
    for ax, prefix, keys, colors, title in groups:
        bottom = np.zeros(len(labels))
        for key in keys:
            vals = np.nan_to_num([_mean(res, lab, f"{prefix}/{key}") for lab in labels])
            ax.bar(
                x,
                vals,
                bottom=bottom,
                color=colors.get(key, "#999999"),
                label=PURCHASE_LABELS.get(key, key),
            )
            bottom += vals
        for xi, total in zip(x, bottom, strict=True):
            ax.annotate(
                f"${total:,.2f}",
                (xi, total),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_ylim(0, max(float(bottom.max(initial=0.0)), 1e-9) * 1.12)  # room for totals
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_title(title)
        ax.set_xlabel("policy")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax_pool.set_ylabel("mean cost per held-out episode (USD)")
    fig.suptitle("Cost breakdown by pool and by purchase option")
    return png_data_uri(fig)


def plot_cost_vs_slo(ev: Evaluation) -> str:
    """Cost against SLO attainment, 95% intervals as error bars, oracle starred, target line."""
    res = ev.results
    labels = list(res.policies)
    oracle = res.oracle
    colors = policy_colors(labels, oracle)
    fig = Figure(figsize=(9.0, 5.0), layout="constrained")
    ax = fig.subplots()
    for label in labels:
        x = _mean(res, label, "cost_usd")
        y = 100.0 * _mean(res, label, "slo_attainment")
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        xci = _ci(res, label, "cost_usd")
        yci = _ci(res, label, "slo_attainment")
        xerr = None if xci is None else [[max(x - xci[0], 0.0)], [max(xci[1] - x, 0.0)]]
        yerr = (
            None
            if yci is None
            else [[max(y - 100.0 * yci[0], 0.0)], [max(100.0 * yci[1] - y, 0.0)]]
        )
        is_oracle = label == oracle
        ax.errorbar(
            x,
            y,
            xerr=xerr,
            yerr=yerr,
            fmt="*" if is_oracle else "o",
            markersize=16 if is_oracle else 8,
            color=colors[label],
            capsize=3,
            label=f"{label} (lower bound)" if is_oracle else label,
        )
        ax.annotate(label, (x, y), xytext=(6, 5), textcoords="offset points", fontsize=9)
    target = 100.0 * res.slo.target_attainment
    ax.axhline(target, color="#d62728", ls="--", lw=1.2, label=f"SLO target {target:g}%")
    lo, _ = ax.get_ylim()
    ax.set_ylim(min(lo, target - 0.5), 100.0 + 0.06 * (100.0 - min(lo, target - 0.5)))
    ax.set_xlabel("mean cost per held-out episode (USD)")
    ax.set_ylabel("SLO attainment (% of requests)")
    ax.set_title("Cost against SLO attainment (95% CI over seeds)")
    ax.grid(alpha=0.3)
    # outside the axes: the upper left, where a legend would go, is where good policies sit
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return png_data_uri(fig)


# --- tables --------------------------------------------------------------------------------------


def best_baseline(results: Results) -> tuple[str | None, str]:
    """The best baseline of an evaluation and a note on how it was chosen.

    The cheapest baseline (by mean cost) whose mean attainment meets the SLO target; if none
    does, the baseline with the highest attainment (a cheaper one that misses the SLO is no
    bar). None when the evaluation has no baselines.
    """
    target = results.slo.target_attainment
    baselines = [b for b in results.baselines if b in results.policies]
    meeting = [b for b in baselines if _mean(results, b, "slo_attainment") >= target]
    if meeting:
        best = min(meeting, key=lambda b: _mean(results, b, "cost_usd"))
        return best, f"the cheapest baseline meeting the {100 * target:g}% SLO target"
    if baselines:
        best = max(baselines, key=lambda b: _mean(results, b, "slo_attainment"))
        return best, (
            f"no baseline meets the {100 * target:g}% SLO target; the one with the highest "
            "attainment"
        )
    return None, "no baselines in this evaluation"


def gap_rows(results: Results) -> tuple[list[dict[str, Any]], str | None, str]:
    """The gap table's rows, the best baseline, and a note on how it was chosen.

    Best baseline: the cheapest baseline that meets the SLO target on average; if none does,
    the baseline with the highest attainment (a cheaper one that misses the SLO is no bar).
    ``closed`` = (best baseline cost - policy cost) / (best baseline cost - oracle cost): 0 for
    the best baseline, 1 for the oracle, negative for a policy dearer than the best baseline.
    """
    oracle = results.oracle
    if oracle is None:
        return [], None, "no oracle in this evaluation"
    target = results.slo.target_attainment
    oracle_cost = _mean(results, oracle, "cost_usd")
    best, note = best_baseline(results)
    best_cost = _mean(results, best, "cost_usd") if best else float("nan")
    rows = []
    for label in results.policies:
        cost = _mean(results, label, "cost_usd")
        gap = best_cost - oracle_cost
        closed = (best_cost - cost) / gap if gap > 0 else float("nan")
        rows.append(
            {
                "policy": label,
                "cost_usd": cost,
                "over_oracle_usd": cost - oracle_cost,
                "over_oracle_pct": 100.0 * (cost / oracle_cost - 1.0)
                if oracle_cost > 0
                else float("nan"),
                "slo_attainment": _mean(results, label, "slo_attainment"),
                "meets_slo": _mean(results, label, "slo_attainment") >= target,
                "closed": closed,
            }
        )
    return rows, best, note


def _cell(results: Results, policy: str, metric: str, fmt: str) -> str:
    return _ci_cell(results.policies[policy].get(metric), fmt)


def _ci_cell(agg: MeanCI, fmt: str) -> str:
    """A table cell: the mean, ± the CI's half-width (the full interval on hover)."""
    mean, ci = agg.value, agg.interval
    text = format_number(mean, fmt)
    if ci is None:
        return f"<td>{html.escape(text)}</td>"
    half = max(ci[1] - mean, mean - ci[0])
    span = f"95% CI [{format_number(ci[0], fmt)}, {format_number(ci[1], fmt)}]"
    return (
        f'<td title="{html.escape(span)}">{html.escape(text)}'
        f'<span class="ci"> ± {html.escape(format_number(half, fmt))}</span></td>'
    )


def summary_table(results: Results) -> str:
    """Every headline metric per policy: mean ± half-width of the 95% CI (full CI on hover)."""
    rows = []
    for label in results.policies:
        cells = [f"<th>{html.escape(label)}</th>"]
        cells += [_cell(results, label, key, fmt) for key, _, fmt in SUMMARY_COLUMNS]
        rows.append(cells)
    return html_table(["Policy", *[title for _, title, _ in SUMMARY_COLUMNS]], rows)


def grouped_table(results: Results, prefix: str, fmt: str, key_title: str) -> str:
    """Rows: the keys of a nested metric (pools, tenants); columns: policies."""
    labels = list(results.policies)
    keys: list[str] = []
    for label in labels:
        keys.extend(k for k in results.policies[label].group(prefix) if k not in keys)
    rows = []
    for key in keys:
        cells = [f"<th>{html.escape(key)}</th>"]
        cells += [_cell(results, label, f"{prefix}/{key}", fmt) for label in labels]
        rows.append(cells)
    return html_table([key_title, *labels], rows)


CLASS_NOTE = (
    "Interactive requests have the TTFT/TPOT SLO; batch requests a completion deadline. SLO "
    "attainment above counts interactive requests only. Batch within deadline = completed / "
    "(completed + expired); requests still queued or in flight at the episode's end are "
    "counted apart. Each pool's cost is split by the tokens each class decoded on it (a pool "
    "that decoded nothing charges the class it serves); the classes' costs sum to the bill."
)
"""What the request-class tables say (rlscale.envs.dynamics, "Batch requests")."""


def class_section(results: Results) -> list[str]:
    """The request-class section (cost per class, batch accounting); none without batch."""
    if not any(summary.group(COST_BY_CLASS_USD) for summary in results.policies.values()):
        return []
    return [
        '<section id="classes"><h2>Request classes: cost (USD) and batch requests</h2>',
        grouped_table(results, COST_BY_CLASS_USD, "{:.3f}", "Class"),
        html_table(
            ["Policy", "Batch within deadline"],
            [
                [
                    f"<th>{html.escape(label)}</th>",
                    _cell(results, label, BATCH_ATTAINMENT, "{:.4f}"),
                ]
                for label in results.policies
            ],
        ),
        grouped_table(results, BATCH_COUNTS, "{:.1f}", "Batch requests"),
        f'<p class="note">{html.escape(CLASS_NOTE)}</p></section>',
    ]


def tenant_table(results: Results) -> str:
    """Rows: tenants (the top ones and ``other``); per policy, the tenant's cost and the idle
    share of it (capacity its load did not need, warm pool, cold starts, draining)."""
    labels = list(results.policies)
    by_policy = {label: results.policies[label].tenants for label in labels}
    tenants: list[str] = []
    for label in labels:
        tenants.extend(t for t in by_policy[label].cost_usd if t not in tenants)
    rows = []
    for tenant in tenants:
        cells = [f"<th>{html.escape(tenant)}</th>"]
        for label in labels:
            own = by_policy[label]
            cost = own.cost_usd.get(tenant, NO_VALUE)
            idle = own.idle_cost_usd.get(tenant, NO_VALUE).value
            share = idle / cost.value if cost.value and math.isfinite(idle) else math.nan
            cells.append(_ci_cell(cost, "{:.3f}"))
            cells.append(f"<td>{html.escape(format_number(share, 'pct'))}</td>")
        rows.append(cells)
    header = ["Tenant"]
    for label in labels:
        header += [f"{label}: USD", f"{label}: idle"]
    return html_table(header, rows)


def gap_table(results: Results) -> str:
    """The gap table as HTML, or a paragraph saying why there is none."""
    rows, best, note = gap_rows(results)
    if not rows:
        return (
            '<p class="note">The gap table needs the oracle (the perfect-foresight lower '
            "bound on cost), and this evaluation has none: it is not registered in this "
            "installation, or it was left out (<code>--no-oracle</code>).</p>"
        )
    body = []
    for r in rows:
        cls = ' class="best"' if r["policy"] == best else ""
        body.append(
            [
                f"<th{cls}>{html.escape(r['policy'])}</th>",
                f"<td>{format_number(r['cost_usd'], '{:.2f}')}</td>",
                f"<td>{format_number(r['over_oracle_usd'], '{:+.2f}')}</td>",
                f"<td>{format_number(r['over_oracle_pct'], '{:+.1f}%')}</td>",
                f"<td>{format_number(r['slo_attainment'], 'pct')}</td>",
                f"<td>{'yes' if r['meets_slo'] else 'no'}</td>",
                f"<td>{format_number(100.0 * r['closed'], '{:.0f}%')}</td>"
                if r["meets_slo"]
                else '<td class="miss">n/a: misses the SLO</td>',
            ]
        )
    header = [
        "Policy",
        "Cost (USD)",
        "Over oracle (USD)",
        "Over oracle (%)",
        "SLO attainment",
        "Meets SLO",
        "Best baseline's gap closed",
    ]
    best_text = html.escape(best) if best else "none"
    return html_table(header, body) + (
        f'<p class="note">Best baseline: <b>{best_text}</b> ({html.escape(note)}). '
        "Gap closed = (best baseline's cost &minus; policy's cost) / (best baseline's cost &minus; "
        "oracle's cost): 0% is the best baseline, 100% the oracle. A policy that misses the "
        "SLO target gets none: savings bought with violations close no gap.</p>"
    )


# --- the page ------------------------------------------------------------------------------------


def render_report(ev: Evaluation) -> str:
    """The whole report as one HTML string (no external assets)."""
    res = ev.results
    trace = res.trace
    held = res.held_out
    esc = html.escape
    facts = {
        "Scenario": res.scenario,
        "Workload": f"{trace.format}: {trace.path or '(synthetic)'} (from {trace.source})",
        "Policies": ", ".join(res.policies),
        "Seeds": ", ".join(str(s) for s in res.seeds),
        "Held-out windows": (
            f"{len(held.test_starts)} of {held.episode_hours:.2f} h, starting at steps "
            f"{', '.join(str(s) for s in held.test_starts)} (training and tuning use steps "
            f"before {held.boundary_step} of {held.total_steps})"
        ),
        "Grid": (
            "every seed runs every held-out window"
            if res.windows == "all"
            else "seed s runs held-out window s mod W"
        ),
        "SLO": (
            f"TTFT ≤ {res.slo.ttft_s:g} s and TPOT ≤ {res.slo.tpot_s:g} s for "
            f"{100 * res.slo.target_attainment:g}% of requests"
        ),
        "Created": res.created_utc or "",
    }
    facts_html = "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in facts.items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>rlscale evaluation: {esc(res.scenario)}</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
        f"<h1>Policy evaluation: {esc(res.scenario)}</h1>",
        f'<section id="setup"><dl>{facts_html}</dl></section>',
        html_figure(
            "load-capacity",
            "Load against ready capacity",
            plot_load_capacity(ev),
            "Arrivals (black) against the capacity of ready replicas, stacked by pool, over one "
            "held-out window. Capacity is a replica's saturation throughput for the workload's "
            "request mix (what policies observe); latency targets are met somewhat below it, "
            "so arrivals near the top of the band already mean queueing, and a band far above "
            "them means paying for idle GPUs.",
        ),
        *budget_sections(ev),
        html_figure(
            "cost-breakdown",
            "Cost by pool and purchase option",
            plot_cost_breakdown(ev),
            "Mean cost per held-out episode over seeds, split by pool (left) and by on-demand "
            "against spot (right).",
        ),
        html_figure(
            "cost-slo",
            "Cost against SLO attainment",
            plot_cost_vs_slo(ev),
            "Upper left is better: cheap, and above the dashed SLO target. Bars are 95% "
            "confidence intervals over seeds; the star is the oracle, a lower bound on cost.",
        ),
        '<section id="gap"><h2>Gap to the oracle</h2>',
        gap_table(res),
        "</section>",
        '<section id="metrics"><h2>Metrics (mean ± 95% CI half-width over seeds)</h2>',
        summary_table(res),
        "</section>",
        '<section id="gpu-hours"><h2>GPU-hours by pool</h2>',
        grouped_table(res, "gpu_hours", "{:.2f}", "Pool"),
        "</section>",
        '<section id="tenants"><h2>Cost per tenant (USD) and its idle share</h2>',
        tenant_table(res),
        f'<p class="note">{html.escape(TENANT_NOTE)}</p></section>',
        *class_section(res),
        '<section id="method"><h2>How these numbers were made</h2><p class="note">',
        "Each metric is per held-out episode. A seed's value is its mean over the windows it "
        "ran; the table shows the mean over seeds and the half-width of the two-sided 95% "
        "Student-t interval of that mean (undefined, shown without ±, for a single seed). "
        "Every policy sees the same random stream for a given seed (common random numbers). "
        "Held-out windows come after the split boundary of the workload and are never used "
        "for tuning or training.</p></section>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(ev: Evaluation, out_dir: Path) -> Path:
    """Write ``report.html`` into ``out_dir`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text(render_report(ev), encoding="utf-8")
    return path


def markdown_table(results: Results) -> str:
    """The headline of an evaluation as a Markdown table (for READMEs and pull requests)."""

    def ci(label: str, metric: str, fmt: str) -> str:
        agg = results.policies[label].get(metric)
        span = agg.interval
        half = f" ± {fmt.format((span[1] - span[0]) / 2)}" if span is not None else ""
        return fmt.format(agg.value) + half

    rows, best, _ = gap_rows(results)
    closed = {r["policy"]: r for r in rows}
    lines = [
        "| policy | cost (USD) | SLO attainment | TTFT p95 (s) | scale events "
        "| over oracle | best baseline's gap closed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label in results.policies:
        gap = closed.get(label)
        over = f"{gap['over_oracle_pct']:+.0f}%" if gap else "n/a"
        if not gap or label == results.oracle:
            shut = "" if gap else "n/a"
        elif not gap["meets_slo"]:
            shut = "misses SLO"
        else:
            shut = f"{100 * gap['closed']:.0f}%"
        name = f"**{label}**" if label == best else label
        lines.append(
            f"| {name} | {ci(label, 'cost_usd', '{:.2f}')} "
            f"| {ci(label, 'slo_attainment', '{:.2%}')} | {ci(label, 'ttft_p95_s', '{:.3f}')} "
            f"| {ci(label, 'scale_events', '{:.1f}')} | {over} | {shut} |"
        )
    timing = results.oracle_cpu_s
    if timing is not None and timing.mean is not None:
        lines.append(
            f"\n{results.oracle}: {timing.mean:.1f} s of CPU per episode window "
            "(solve, tuning replays and its episode)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m rlscale.experiments.report results.json``: print the Markdown table."""
    import argparse

    from rlscale.experiments.results import ResultsError

    parser = argparse.ArgumentParser(description=markdown_table.__doc__)
    parser.add_argument("results", type=Path, help="a results.json written by rlscale evaluate")
    args = parser.parse_args(argv)
    try:
        results = load_results(args.results)
    except ResultsError as err:
        parser.exit(2, f"rlscale: {err}\n")
    print(markdown_table(results))


if __name__ == "__main__":
    main()
