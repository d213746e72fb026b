"""``rlscale cost-report``: the bill by tenant, pool and purchase option over time.

From an evaluation's ``results.json`` (every policy: its mean bill per held-out episode and, over
time, the recorded episode's bill, seed 0 in the first window) or from a shadow database (one
live cluster's metered bill, :mod:`rlscale.serving.shadow_cost`). Writes ``cost_report.json``
and a self-contained ``cost_report.html`` with plots.

The JSON has one entry per policy (evaluation) or cluster (shadow)::

    {"source": {...},
     "entries": {NAME: {"kind": "policy" | "cluster", "bill_usd": B,
                        "by_pool_usd": {pool: usd}, "by_purchase_usd": {option: usd},
                        "tenants": {tenant: {"cost_usd": c, "idle_usd": i, ...}},
                        "other_tenants": the tenant key the rest is summed under, or null,
                        "timeline": {"start_s", "span_s", "bill_usd",
                                     "by_pool_usd": {pool: [usd per span]}, "by_purchase_usd",
                                     "by_tenant_usd", "idle_by_tenant_usd"}}}}

Each split sums to its bill (within float rounding): pools, purchase options and tenants to
``bill_usd``, and each of the timeline's splits to the timeline's ``bill_usd``. Tenants beyond
the top ones are summed as ``other``. How tenants are charged: :mod:`rlscale.envs.metering`.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rlscale.common.html import REPORT_CSS, format_number, html_figure, html_table, png_data_uri
from rlscale.envs.scenario import ScenarioError
from rlscale.experiments.report import PURCHASE_COLORS, PURCHASE_LABELS, TENANT_NOTE
from rlscale.experiments.results import (
    CostTimeline,
    MeanCI,
    PolicySummary,
    Results,
    ResultsError,
    json_safe,
    other_key,
    top_and_other,
)

_PALETTE = (
    "#4c72b0",
    "#55a868",
    "#c44e52",
    "#8172b2",
    "#ccb974",
    "#64b5cd",
    "#8c8c8c",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#7f7f7f",
)


class CostReportError(ScenarioError):
    """The input cannot be reported on: missing, malformed, or without what the report needs."""


# --- from an evaluation --------------------------------------------------------------------------


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CostReportError(f"no evaluation results at {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CostReportError(f"{path} is not a JSON file: {err}") from None
    if not isinstance(data, dict):
        raise CostReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def from_results(path: str | Path) -> dict[str, Any]:
    """The cost report of an evaluation's ``results.json`` (``rlscale evaluate --out``).

    :raises CostReportError: no such file, not JSON, not an evaluation's results, or results
        written before cost timelines were recorded.
    """
    path = Path(path)
    data = _load_json(path)
    missing = [k for k in ("scenario", "pools", "policies", "cost_timelines") if k not in data]
    if missing:
        hint = (
            "; rerun rlscale evaluate to record them"
            if missing == ["cost_timelines"]
            else " (is it an evaluation's results.json?)"
        )
        raise CostReportError(f"{path} has no {', '.join(missing)}{hint}")
    try:
        results = Results.from_json(data)
    except ResultsError as err:
        raise CostReportError(f"{path}: malformed evaluation results: {err}") from None
    timelines = results.cost_timelines or {}
    # the name the evaluation summed the rest of the tenants under, if it did
    rest = None if results.top_tenants is None else other_key(results.top_tenants)
    entries = {}
    for label, summary in results.policies.items():
        entries[label] = _policy_entry(summary, timelines.get(label))
        entries[label]["other_tenants"] = rest if rest in entries[label]["tenants"] else None
    return {
        "source": {
            "kind": "evaluation",
            "path": str(path),
            "scenario": results.scenario,
            "totals": "mean per held-out episode over seeds",
            "timeline": "one recorded episode per policy (its seed and start step given)",
        },
        "entries": entries,
    }


def _means(group: dict[str, MeanCI]) -> dict[str, float]:
    return {key: agg.value for key, agg in group.items()}


def _policy_entry(summary: PolicySummary, timeline: CostTimeline | None) -> dict[str, Any]:
    own = summary.tenants
    idle, gpu_h = _means(own.idle_cost_usd), _means(own.busy_gpu_hours)
    tenants = {
        t: {"cost_usd": c, "idle_usd": idle.get(t, math.nan), "busy_gpu_hours": gpu_h.get(t)}
        for t, c in _means(own.cost_usd).items()
    }
    return {
        "kind": "policy",
        "bill_usd": summary.mean("cost_usd"),
        "by_pool_usd": _means(summary.group("cost_by_pool_usd")),
        "by_purchase_usd": _means(summary.group("cost_by_purchase_usd")),
        "tenants": tenants,
        "timeline": None if timeline is None else timeline.to_json(),
    }


# --- shaping -------------------------------------------------------------------------------------


def limit_tenants(report: dict[str, Any], n: int) -> dict[str, Any]:
    """``report`` with each entry's tenants cut to the ``n`` costliest (over all entries) and
    the rest summed as ``other``, in the totals and in the timelines alike."""
    if n < 0:
        raise CostReportError(f"--top-tenants must be >= 0, got {n}")
    totals: dict[str, float] = {}
    for entry in report["entries"].values():
        for t, v in entry["tenants"].items():
            if t != entry.get("other_tenants"):  # a sum of tenants is not one to rank
                totals[t] = totals.get(t, 0.0) + float(v["cost_usd"])
    top = [t for t, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
    if len(top) == len(totals):
        return report
    for entry in report["entries"].values():
        entry["other_tenants"] = other_key(top)
        fields = {k for v in entry["tenants"].values() for k in v}
        cut = {
            f: top_and_other(
                {t: (v.get(f) or 0.0) for t, v in entry["tenants"].items()},
                top,
            )
            for f in fields
        }
        names = list(cut[next(iter(fields))]) if fields else []
        entry["tenants"] = {t: {f: cut[f][t] for f in fields} for t in names}
        tl = entry.get("timeline")
        if tl is not None:
            for key in ("by_tenant_usd", "idle_by_tenant_usd"):
                tl[key] = {
                    t: np.asarray(v).tolist() for t, v in top_and_other(tl[key], top).items()
                }
    report["top_tenants"] = n
    return report


def check_sums(report: dict[str, Any], rel: float = 1e-6) -> list[str]:
    """Where a split does not sum to its bill (empty when every one does)."""
    bad = []
    for name, e in report["entries"].items():
        splits = {
            "pools": sum(e["by_pool_usd"].values()),
            "purchase options": sum(e["by_purchase_usd"].values()),
            "tenants": sum(v["cost_usd"] for v in e["tenants"].values()),
        }
        tl = e.get("timeline")
        if tl is not None:
            for key in ("by_pool_usd", "by_purchase_usd", "by_tenant_usd"):
                total = float(sum(sum(v) for v in tl[key].values()))
                if not math.isclose(total, tl["bill_usd"], rel_tol=rel, abs_tol=1e-9):
                    bad.append(f"{name}: timeline {key} sums to {total}, bill {tl['bill_usd']}")
        for what, total in splits.items():
            empty = what == "tenants" and not e["tenants"]
            if not empty and not math.isclose(total, e["bill_usd"], rel_tol=rel, abs_tol=1e-9):
                bad.append(f"{name}: {what} sum to {total}, bill {e['bill_usd']}")
    return bad


# --- the page ------------------------------------------------------------------------------------


def _colors(keys: Sequence[str]) -> dict[str, str]:
    out = {}
    for i, k in enumerate(keys):
        out[k] = PURCHASE_COLORS.get(k) or _PALETTE[i % len(_PALETTE)]
    return out


def plot_timeline(name: str, tl: dict[str, Any]) -> str:
    """Three stacked-area panels of the bill per span: by pool, purchase option and tenant."""
    span_s = float(tl["span_s"])
    n = len(next(iter(tl["by_pool_usd"].values()), []))
    hours = (np.arange(n) * span_s) / 3600.0
    fig = Figure(figsize=(11.0, 7.4), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    panels = (
        ("by_pool_usd", "by pool"),
        ("by_purchase_usd", "by purchase option"),
        ("by_tenant_usd", "by tenant"),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        series = tl[key]
        keys = list(series)
        colors = _colors(keys)
        ax.stackplot(
            hours,
            *[np.asarray(series[k], dtype=float) for k in keys],
            labels=[PURCHASE_LABELS.get(k, k) for k in keys],
            colors=[colors[k] for k in keys],
            alpha=0.8,
            step="post",
        )
        ax.set_title(f"{name}: cost per {span_s / 60:g}-minute span, {title}")
        ax.set_ylabel("USD")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1].set_xlabel("hours from the start")
    return png_data_uri(fig)


def _money(x: float | None) -> str:
    return f"<td>{html.escape(format_number(x, '{:,.4f}'))}</td>"


def _split_table(entries: dict[str, Any], key: str, title: str) -> str:
    names = list(entries)
    keys: list[str] = []
    for e in entries.values():
        keys += [k for k in e[key] if k not in keys]
    rows = [
        [f"<th>{html.escape(PURCHASE_LABELS.get(k, k))}</th>"]
        + [_money(entries[n][key].get(k, 0.0)) for n in names]
        for k in keys
    ]
    rows.append(["<th>bill</th>"] + [_money(entries[n]["bill_usd"]) for n in names])
    return html_table([title, *names], rows)


def tenant_rows_table(entry: dict[str, Any]) -> str:
    """One entry's tenants, costliest first: cost, idle part, idle share (and busy GPU-hours
    when known)."""
    tenants = sorted(entry["tenants"].items(), key=lambda kv: -float(kv[1]["cost_usd"]))
    gpu = any(v.get("busy_gpu_hours") is not None for _, v in tenants)
    rows = []
    for t, v in tenants:
        cost, idle = float(v["cost_usd"]), v.get("idle_usd")
        share = idle / cost if idle is not None and cost > 0 else math.nan
        row = [f"<th>{html.escape(t)}</th>", _money(cost), _money(idle)]
        row.append(f"<td>{html.escape(format_number(share, 'pct'))}</td>")
        if gpu:
            row.append(f"<td>{html.escape(format_number(v.get('busy_gpu_hours'), '{:.3f}'))}</td>")
        rows.append(row)
    header = ["Tenant", "Cost (USD)", "of it idle (USD)", "Idle share"]
    return html_table(header + (["Busy GPU-hours"] if gpu else []), rows)


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    esc = html.escape
    src = report["source"]
    entries = report["entries"]
    title = (
        f"Cost report: {src.get('scenario', '')}"
        if src["kind"] == "evaluation"
        else f"Cost report: cluster {', '.join(entries)}"
    )
    facts = {k: str(v) for k, v in src.items()}
    facts_html = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts.items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{REPORT_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<section id="source"><dl>{facts_html}</dl></section>',
        '<section id="by-pool"><h2>Cost by pool (USD)</h2>',
        _split_table(entries, "by_pool_usd", "Pool"),
        "</section>",
        '<section id="by-purchase"><h2>Cost by purchase option (USD)</h2>',
        _split_table(entries, "by_purchase_usd", "Purchase option"),
        "</section>",
    ]
    for k, (name, entry) in enumerate(entries.items()):
        parts.append(f'<section id="tenants-{k}"><h2>Cost by tenant: {esc(name)}</h2>')
        parts.append(tenant_rows_table(entry))
        notes = [TENANT_NOTE]
        if entry.get("split_unknown_usd"):
            notes.append(
                f"{entry['split_unknown_usd']:.4f} USD was metered while the cluster reported no "
                "arrival rate: it is in the tenants' cost but in neither busy nor idle."
            )
        if entry.get("unmetered_s"):
            notes.append(
                f"{entry['unmetered_s']:.0f} s between observations beyond the staleness bound "
                "were not metered."
            )
        parts.append(f'<p class="note">{esc(" ".join(notes))}</p></section>')
        tl = entry.get("timeline")
        if tl is not None:
            where = (
                f"seed {tl['seed']}, episode starting at step {tl['start_step']}"
                if "seed" in tl
                else f"from unix time {tl['start_s']:.0f}"
            )
            parts.append(
                html_figure(
                    f"timeline-{k}",
                    f"Cost over time: {name}",
                    plot_timeline(name, tl),
                    f"The bill of {where} ({tl['bill_usd']:.4f} USD), per span of "
                    f"{tl['span_s'] / 60:g} minutes, stacked by pool, purchase option and tenant.",
                )
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_cost_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``cost_report.json`` (strict JSON) and ``cost_report.html`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "cost_report.json"
    json_path.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    html_path = out / "cost_report.html"
    html_path.write_text(render_html(report))
    return json_path, html_path


# --- command line --------------------------------------------------------------------------------


def add_cost_report_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``cost-report`` subcommand's arguments."""
    p = sub.add_parser(
        "cost-report",
        help="the bill by tenant, pool and purchase option over time (HTML and JSON)",
        description=(
            "Report cost by tenant (with each tenant's idle share), pool and purchase option, "
            "in total and over time, from an evaluation's results.json or from a shadow "
            "database. Writes cost_report.json and cost_report.html to --out."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", type=Path, help="an evaluation's results.json")
    src.add_argument("--shadow", type=Path, help="a shadow database (rlscale serve --shadow-db)")
    p.add_argument("--scenario", help="with --shadow: the scenario the service ran (pools, prices)")
    p.add_argument("--cluster", default=None, help="with --shadow: the cluster (default: busiest)")
    p.add_argument(
        "--max-gap-s",
        type=float,
        default=None,
        help="with --shadow: meter a gap between observations for at most this long "
        "(default: the service's staleness bound)",
    )
    p.add_argument("--top-tenants", type=int, default=10, help="tenants reported by name")
    p.add_argument("--out", type=Path, default=Path("out/cost-report"))
    return p
