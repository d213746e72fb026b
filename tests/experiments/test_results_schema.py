"""The typed ``results.json``: a file written before the schema had a version loads, a file
written now reads back equal to what was written, and bad files name the field at fault."""

from __future__ import annotations

import copy
import json

import pytest

from rlscale.experiments import results
from rlscale.experiments.cost_report import from_results
from rlscale.experiments.report import gap_rows, main, markdown_table
from rlscale.experiments.results import (
    RESULTS_VERSION,
    CostTimeline,
    MeanCI,
    Results,
    ResultsError,
    load_results,
)


@pytest.fixture(scope="module")
def old(results_d0578ef):
    return json.loads(results_d0578ef.read_text())


def test_a_file_of_d0578ef_loads_into_typed_fields(results_d0578ef, old):
    res = load_results(results_d0578ef)
    assert "version" not in old  # written before the field existed
    assert res.version == RESULTS_VERSION
    assert res.scenario == "quick" and res.seeds == [0, 1] and res.windows == "all"
    assert res.trace == results.TraceInfo("csv", "/tmp/trace.csv", "--trace")
    assert res.held_out.test_starts == [res.held_out.boundary_step] == [179]
    assert res.held_out.episode_steps == 60 and res.held_out.control_interval_s == 30.0
    assert res.slo.target_attainment == 0.99
    assert res.pools["h100"] == results.PoolInfo("on_demand", 4.0)
    assert list(res.policies) == ["static", "hpa", "oracle"]
    assert res.oracle == "oracle" and res.baselines == ["static", "hpa"]
    assert res.top_tenants == ["alpha", "beta"]
    static = res.policies["static"]
    assert static["cost_usd"] == MeanCI(
        old["policies"]["static"]["cost_usd"]["mean"],
        tuple(old["policies"]["static"]["cost_usd"]["ci95"]),
    )
    assert static.mean("no-such-metric") != static.mean("no-such-metric")  # NaN, not KeyError
    assert set(static.group("cost_by_pool_usd")) == {"h100", "a100"}
    tenants = static.tenants
    assert set(tenants.cost_usd) == set(tenants.idle_cost_usd) == {"alpha", "beta", "other"}
    assert sum(t.value for t in tenants.cost_usd.values()) == pytest.approx(static.mean("cost_usd"))
    assert res.oracle_cpu_s.mean > 0 and res.oracle_cpu_s.interval is not None
    tl = res.cost_timelines["hpa"]
    assert isinstance(tl, CostTimeline) and tl.seed == 0 and tl.start_step == 179
    assert sum(map(sum, tl.by_pool_usd.values())) == pytest.approx(tl.bill_usd, rel=1e-9)


def test_a_file_of_d0578ef_writes_back_unchanged_but_for_the_version(old):
    again = results.json_safe(Results.from_json(old).to_json())
    assert again.pop("version") == RESULTS_VERSION
    assert again == old
    assert list(again) == list(old)  # the same field order, so files diff cleanly


def test_readers_read_a_file_of_d0578ef(results_d0578ef, capsys):
    res = load_results(results_d0578ef)
    rows, best, _ = gap_rows(res)
    assert {r["policy"] for r in rows} == {"static", "hpa", "oracle"} and best in res.baselines
    assert "oracle: " in markdown_table(res)
    main([str(results_d0578ef)])
    assert capsys.readouterr().out.startswith("| policy | cost (USD)")
    report = from_results(results_d0578ef)
    assert report["entries"]["static"]["bill_usd"] == res.mean("static", "cost_usd")
    assert report["entries"]["static"]["other_tenants"] == "other"
    metrics = res.mlflow_metrics()
    assert metrics["hpa/cost_per_tenant_usd/alpha"] == res.mean("hpa", "cost_per_tenant_usd/alpha")
    assert res.mlflow_params()["test_starts"] == "[179]"


def _broken(old, change):
    data = copy.deepcopy(old)
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("policies"), r"^policies: missing$"),
        (lambda d: d["held_out"].pop("episode_steps"), r"^held_out\.episode_steps: missing$"),
        (
            lambda d: d["policies"]["static"]["cost_usd"].update(mean="expensive"),
            r"^policies\.static\.cost_usd\.mean: Input should be a valid number, "
            r"got str 'expensive'$",
        ),
        (
            lambda d: d["policies"]["hpa"]["slo_attainment"].update(ci95=[0.9]),
            r"^policies\.hpa\.slo_attainment\.ci95\[1\]: missing$",
        ),
        (
            lambda d: d["cost_timelines"]["static"]["by_tenant_usd"]["alpha"].append("x"),
            r"^cost_timelines\.static\.by_tenant_usd\.alpha\[60\]: Input should be a valid number",
        ),
        (
            lambda d: d["seeds"].append(1.5),
            r"^seeds\[2\]: Input should be a valid integer, got float 1\.5$",
        ),
        (lambda d: d["slo"].update(target_attainment=2.0), r"^slo\.target_attainment: "),
        (lambda d: d.update(pools=[]), r"^pools: Input should be a valid dictionary, got list"),
        (lambda d: d.update(version=2), r"^version: this rlscale reads results\.json version 1"),
    ],
)
def test_bad_results_name_the_field(old, change, message):
    with pytest.raises(ResultsError, match=message):
        Results.from_json(_broken(old, change))


def test_bad_files_name_the_file(tmp_path, old, capsys):
    with pytest.raises(ResultsError, match="no such file"):
        load_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ResultsError, match=r"bad\.json is not a JSON file"):
        load_results(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ResultsError, match=r"list\.json: results: expected an object, got list"):
        load_results(tmp_path / "list.json")
    future = tmp_path / "future.json"
    future.write_text(json.dumps({**old, "version": 2}))
    with pytest.raises(SystemExit) as stop:
        main([str(future)])
    assert stop.value.code == 2
    assert "future.json: version: this rlscale reads results.json version 1" in (
        capsys.readouterr().err
    )
