"""``python -m rlscale.experiments.oracle_bench``: both formulations on a real held-out window."""

from __future__ import annotations

import json

import pytest

from rlscale.envs.scenario import ScenarioError
from rlscale.experiments.oracle_bench import bench_oracle, main


@pytest.mark.needs_data
def test_both_formulations_cost_the_same_within_one_percent(capsys) -> None:
    # azure-conv's held-out half hour: cheap for the program as first written too
    main(["--scenario", "azure-conv", "--seeds", "0"])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    rows = {r["formulation"]: r for r in result["rows"]}
    assert set(rows) == {"integral", "continuous"}
    for r in rows.values():
        assert r["meets_slo"] and r["cpu_s"] > 0.0 and r["trials"] >= 1
    assert rows["integral"]["cost_usd"] == pytest.approx(rows["continuous"]["cost_usd"], rel=0.01)
    table = [line for line in lines if line.startswith("| 0 |")]
    assert len(table) == 1 and f"{rows['integral']['cost_usd']:.2f}" in table[0]
    with pytest.raises(ScenarioError, match="held-out windows"):
        bench_oracle("azure-conv", [0], ["integral"], window=99)


def test_a_bad_formulation_is_named() -> None:
    with pytest.raises(ScenarioError, match="formulations"):
        bench_oracle("azure-conv", [0], ["exact"])
