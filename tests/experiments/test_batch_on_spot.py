"""experiments/batch_on_spot.py: the pool layouts it compares and its table."""

from __future__ import annotations

import pytest

from rlscale.envs.scenario import ScenarioError, load_scenario
from rlscale.experiments.batch_on_spot import LAYOUTS, layout_scenario, markdown


def test_layouts_move_the_classes_between_pools():
    sc = load_scenario("azure-conv-batch")
    plain = layout_scenario(sc, "all-interactive")
    assert plain.workload.batch is None and plain.pools == sc.pools
    assert layout_scenario(sc, "shared") == sc
    split = layout_scenario(sc, "split")
    assert [p.serves for p in split.pools] == ["interactive", "batch"]
    assert split.workload == sc.workload
    with pytest.raises(ScenarioError, match="layout must be one of"):
        layout_scenario(sc, "everything")
    with pytest.raises(ScenarioError, match=r"no workload\.batch section"):
        layout_scenario(load_scenario("azure-conv"), "split")


def test_table_marks_the_layout_without_batch_work():
    row = {
        "cost_usd": 10.0,
        "slo_attainment": 0.99,
        "batch_attainment": 1.0,
        "batch_cost_usd": 2.5,
        "spot_cost_usd": 1.25,
    }
    rows = [{"layout": layout, "policy": "p", **row} for layout in LAYOUTS]
    lines = markdown(rows).splitlines()
    assert len(lines) == 2 + len(LAYOUTS)
    assert "(served as interactive)" in lines[2] and "| - |" in lines[2]
    assert lines[3] == "| shared | p | 10.00 | 0.9900 | 1.0000 | 2.50 | 1.25 |"
