"""``rlscale evaluate`` on a scenario with a capped budget: what results.json and the report
say about where the cap bound."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlscale.envs.scenario import load_scenario
from rlscale.experiments.budget_report import (
    budget_names,
    budget_rows,
    budget_sections,
    budget_table,
)
from rlscale.experiments.evaluate import evaluate
from rlscale.experiments.report import render_report
from rlscale.experiments.results import Evaluation, PolicySummary, Results

pytestmark = pytest.mark.needs_data

SCENARIO = "synthetic-4day-budget"


@pytest.fixture(scope="module")
def evaluation():
    return evaluate(
        SCENARIO, ["hpa", "static"], seeds=1, include_oracle=False, progress=False, max_windows=1
    )


def test_results_say_where_the_cap_bound_and_what_it_spent(evaluation):
    (budget,) = load_scenario(SCENARIO).budgets
    res = evaluation.results
    assert budget_names(res) == [budget.name]
    steps = res.held_out.episode_steps
    for label, m in res.policies.items():
        peak = m.mean(f"budget_peak_spend_usd/{budget.name}")
        assert m.mean(f"budget_limit_usd/{budget.name}") == budget.limit_usd
        assert peak <= budget.limit_usd * (1 + 1e-9)
        assert m.mean(f"budget_breaches/{budget.name}") == 0.0
        # the episode is the budget's day: its bill is the day's spend
        assert m.mean("cost_usd") == pytest.approx(peak, rel=1e-9)
        bound = m.mean("cap_bound_steps")
        assert 0 < bound < steps, label  # both baselines outspend the cap on the held-out day
        assert 0 <= m.mean("cap_bound_met") <= m.mean("cap_bound_requests")
        tl = evaluation.timelines[label]
        capped = np.asarray(tl["cap_bound"]) > 0
        assert capped.sum() == bound
        spend = np.asarray(tl[f"budget_spend_usd/{budget.name}"])
        assert spend.max() == pytest.approx(peak, rel=1e-12)
        # once the cap binds the budget is all but spent: the rest of the day runs on what is
        # left (a few replica-intervals at most), and its last hour on nothing
        first = int(np.argmax(capped))
        assert budget.limit_usd - spend[first] < 1.0
        assert np.asarray(tl["cost_usd"])[-120:].max() == 0.0
        assert capped[-120:].mean() > 0.5
    rows = {r["policy"]: r for r in budget_rows(res)}
    hpa = res.policies["hpa"]
    assert rows["hpa"]["capped_share"] == pytest.approx(hpa.mean("cap_bound_steps") / steps)
    assert rows["hpa"]["capped_attainment"] == pytest.approx(
        hpa.mean("cap_bound_met") / hpa.mean("cap_bound_requests")
    )


def test_the_report_plots_spend_against_the_limit_and_tables_the_cap(evaluation):
    page = render_report(evaluation)
    assert '<section id="budget">' in page and "data:image/png;base64," in page
    assert '<section id="budgets">' in page
    assert "SLO attainment while capped" in page
    share = budget_rows(evaluation.results)[0]["capped_share"]
    assert f"{100 * share:.2f}%" in page


def _without(results: Results, prefixes: tuple[str, ...]) -> Results:
    """``results`` with every policy's metrics starting with one of ``prefixes`` removed."""
    policies = {
        label: PolicySummary({k: v for k, v in m.metrics.items() if not k.startswith(prefixes)})
        for label, m in results.policies.items()
    }
    return dataclasses.replace(results, policies=policies)


def test_no_budget_section_without_budgets_and_no_cap_columns_without_a_cap(evaluation):
    res = _without(evaluation.results, ("cap_bound_",))
    table = budget_table(res)
    assert "peak spend" in table and "while capped" not in table
    res = _without(res, ("budget_",))
    assert budget_names(res) == []
    assert budget_sections(Evaluation(results=res)) == []
    assert '<section id="budgets">' not in render_report(
        Evaluation(results=res, timelines=evaluation.timelines)
    )


def test_the_plot_shows_spend_over_the_limit(evaluation, monkeypatch):
    """A budget in report or penalty mode may be spent past its limit: the plot's axis
    reaches the highest share, not a fixed 110% that cuts the overspend off."""
    import rlscale.experiments.budget_report as br

    (budget,) = load_scenario(SCENARIO).budgets
    key = f"budget_spend_usd/{budget.name}"
    timelines = {
        label: {**tl, key: np.asarray(tl[key]) * 2.5} for label, tl in evaluation.timelines.items()
    }
    figures = []
    monkeypatch.setattr(br, "png_data_uri", lambda fig: figures.append(fig) or "")
    br.plot_budget(dataclasses.replace(evaluation, timelines=timelines))
    (fig,) = figures
    for ax, label in zip(fig.axes, evaluation.results.policies, strict=False):
        if label not in timelines:
            continue
        highest = float(np.max(timelines[label][key])) / budget.limit_usd
        assert highest > 1.5
        assert ax.get_ylim()[1] >= highest, label
