"""``rlscale evaluate`` on a scenario with a capped budget: what results.json and the report
say about where the cap bound."""

from __future__ import annotations

import copy

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
from rlscale.experiments.results import Evaluation

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
    steps = res["held_out"]["episode_hours"] * 3600 / res["held_out"]["control_interval_s"]
    for label, m in res["policies"].items():
        peak = m[f"budget_peak_spend_usd/{budget.name}"]["mean"]
        assert m[f"budget_limit_usd/{budget.name}"]["mean"] == budget.limit_usd
        assert peak <= budget.limit_usd * (1 + 1e-9)
        assert m[f"budget_breaches/{budget.name}"]["mean"] == 0.0
        # the episode is the budget's day: its bill is the day's spend
        assert m["cost_usd"]["mean"] == pytest.approx(peak, rel=1e-9)
        bound = m["cap_bound_steps"]["mean"]
        assert 0 < bound < steps, label  # both baselines outspend the cap on the held-out day
        assert 0 <= m["cap_bound_met"]["mean"] <= m["cap_bound_requests"]["mean"]
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
    hpa = res["policies"]["hpa"]
    assert rows["hpa"]["capped_share"] == pytest.approx(hpa["cap_bound_steps"]["mean"] / steps)
    assert rows["hpa"]["capped_attainment"] == pytest.approx(
        hpa["cap_bound_met"]["mean"] / hpa["cap_bound_requests"]["mean"]
    )


def test_the_report_plots_spend_against_the_limit_and_tables_the_cap(evaluation):
    page = render_report(evaluation)
    assert '<section id="budget">' in page and "data:image/png;base64," in page
    assert '<section id="budgets">' in page
    assert "SLO attainment while capped" in page
    share = budget_rows(evaluation.results)[0]["capped_share"]
    assert f"{100 * share:.2f}%" in page


def test_no_budget_section_without_budgets_and_no_cap_columns_without_a_cap(evaluation):
    res = copy.deepcopy(evaluation.results)
    for m in res["policies"].values():
        for key in ("cap_bound_steps", "cap_bound_requests", "cap_bound_met"):
            del m[key]
    table = budget_table(res)
    assert "peak spend" in table and "while capped" not in table
    for m in res["policies"].values():
        for key in [k for k in m if k.startswith("budget_")]:
            del m[key]
    assert budget_names(res) == []
    assert budget_sections(Evaluation(results=res)) == []
    assert '<section id="budgets">' not in render_report(
        Evaluation(results=res, timelines=evaluation.timelines)
    )
