"""The evaluation report's budget section: where each policy's spend stood against the
scenario's budgets, and where a cap bound and what the SLO paid for it.

Reads an :class:`~rlscale.experiments.results.Evaluation` of a scenario with ``budgets:``
(:mod:`rlscale.envs.budgets`): the flat per-budget metrics (``budget_peak_spend_usd/NAME``,
``budget_limit_usd/NAME``, ``budget_breaches/NAME``), the cap's counts (``cap_bound_steps``,
``cap_bound_requests``, ``cap_bound_met``) and the recorded episode's timeline
(``budget_spend_usd/NAME``, ``cap_bound``, ``attainment``). A scenario without budgets gets no
section.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rlscale.common.html import format_number, html_figure, html_table, png_data_uri
from rlscale.envs.names import (
    BUDGET_BREACHES,
    BUDGET_LIMIT_USD,
    BUDGET_PEAK_SPEND_USD,
    CAP_BOUND_MET,
    CAP_BOUND_REQUESTS,
    CAP_BOUND_STEPS,
)
from rlscale.experiments.results import Evaluation, Results

BUDGET_NOTE = (
    "A budget's spend counts per UTC period of the simulated clock (which starts on Monday "
    "2024-01-01); an episode's first period starts with nothing spent. Peak: the most a "
    "period of the episode spent. Under a cap, the simulator cuts the policy's scale-ups and "
    "then stops replicas, most expensive first, so that the period's spend never exceeds the "
    "limit, counting what draining replicas may still be billed; 'capped steps' are the "
    "decisions it changed, and the attainment is that of the requests of those steps."
)


def budget_names(results: Results) -> list[str]:
    """The scenario's budgets, as the evaluated metrics name them (none: no budgets)."""
    names: list[str] = []
    for summary in results.policies.values():
        names += list(summary.group(BUDGET_LIMIT_USD))
    return list(dict.fromkeys(names))


def _capped(results: Results) -> bool:
    return any(CAP_BOUND_STEPS in summary for summary in results.policies.values())


def budget_rows(results: Results) -> list[dict[str, Any]]:
    """Per policy: each budget's peak spend, its share of the limit and breaches; under a cap,
    the share of steps it bound and the SLO attainment of those steps' requests (None when
    it never bound)."""
    steps = results.held_out.episode_steps
    rows = []
    for label, summary in results.policies.items():
        row: dict[str, Any] = {"policy": label}
        for name in budget_names(results):
            peak = summary.mean(f"{BUDGET_PEAK_SPEND_USD}/{name}")
            row[name] = {
                "peak_spend_usd": peak,
                "peak_share": peak / summary.mean(f"{BUDGET_LIMIT_USD}/{name}"),
                "breaches": summary.mean(f"{BUDGET_BREACHES}/{name}"),
            }
        if CAP_BOUND_STEPS in summary:
            requests = summary.mean(CAP_BOUND_REQUESTS)
            row["capped_share"] = summary.mean(CAP_BOUND_STEPS) / steps
            row["capped_attainment"] = (
                summary.mean(CAP_BOUND_MET) / requests if requests > 0 else None
            )
        rows.append(row)
    return rows


def budget_table(results: Results) -> str:
    """The budget rows as an HTML table."""
    names = budget_names(results)
    capped = _capped(results)
    header = ["Policy"]
    for name in names:
        header += [f"{name}: peak spend (USD)", f"{name}: of limit", f"{name}: breaches"]
    if capped:
        header += ["Capped steps", "SLO attainment while capped"]
    rows = []
    for row in budget_rows(results):
        cells = [f"<th>{html.escape(row['policy'])}</th>"]
        for name in names:
            b = row[name]
            cells += [
                f"<td>{format_number(b['peak_spend_usd'], '{:.2f}')}</td>",
                f"<td>{format_number(b['peak_share'], 'pct')}</td>",
                f"<td>{format_number(b['breaches'], '{:.2f}')}</td>",
            ]
        if capped:
            att = row.get("capped_attainment")
            cells += [
                f"<td>{format_number(row.get('capped_share', math.nan), 'pct')}</td>",
                f"<td>{'—' if att is None else format_number(att, 'pct')}</td>",
            ]
        rows.append(cells)
    return html_table(header, rows)


def plot_budget(ev: Evaluation) -> str:
    """Small multiples, one per policy: each budget's period spend against its limit over the
    recorded held-out window, the steps where the cap bound shaded, and SLO attainment."""
    res = ev.results
    names = budget_names(res)
    labels = [p for p in res.policies if p in ev.timelines]
    n = max(len(labels), 1)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.6 * ncols, 2.9 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
    step_h = res.held_out.control_interval_s / 3600.0
    for ax, label in zip(axes.flat, labels, strict=False):
        tl = ev.timelines[label]
        att = np.asarray(tl["attainment"], dtype=float)
        t = (np.arange(att.size) + 1) * step_h
        bound = np.asarray(tl.get("cap_bound", np.zeros(att.size)), dtype=float) > 0
        if bound.any():
            ax.fill_between(
                t, 0, 1, where=bound, transform=ax.get_xaxis_transform(), color="#d62728",
                alpha=0.15, step="pre", label="cap bound",
            )  # fmt: skip
        top = 1.1
        for k, name in enumerate(names):
            limit = res.mean(label, f"{BUDGET_LIMIT_USD}/{name}")
            spend = np.asarray(tl[f"budget_spend_usd/{name}"], dtype=float)
            color = f"C{k}"
            ax.plot(t, spend / limit, color=color, lw=1.4, label=f"{name}: spend / limit")
            share = spend / limit
            share = share[np.isfinite(share)]
            if share.size:  # a budget reported or charged, not capped, may go past its limit
                top = max(top, 1.05 * float(share.max()))
        ax.axhline(1.0, color="black", ls="--", lw=0.8, label="limit")
        ax.plot(t, att, color="#7f7f7f", lw=0.7, label="SLO attainment (step)")
        ax.set_ylim(0, top)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("hours into the held-out window")
    for ax in axes[:, 0]:
        ax.set_ylabel("share")
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_visible(False)
    handles, texts = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="outside lower center", ncols=min(len(texts), 4), fontsize=9)
    fig.suptitle(f"Spend against budget (seed {res.seeds[0]}, first held-out window)")
    return png_data_uri(fig)


def budget_sections(ev: Evaluation) -> list[str]:
    """The report's budget figure and table; empty for a scenario without budgets."""
    if not budget_names(ev.results):
        return []
    parts = []
    if ev.timelines:
        parts.append(
            html_figure(
                "budget",
                "Spend against budget",
                plot_budget(ev),
                "Each budget's spend in its current period over its limit (the dashed line), "
                "one held-out window per policy; red bands mark the steps where a cap cut the "
                "policy's action, the grey line is each step's SLO attainment.",
            )
        )
    parts += [
        '<section id="budgets"><h2>Budgets</h2>',
        budget_table(ev.results),
        f'<p class="note">{html.escape(BUDGET_NOTE)}</p></section>',
    ]
    return parts
