"""``rlscale cost-report`` from a real evaluation's results.json: sums, HTML, errors."""

from __future__ import annotations

import json
import math

import pytest

from rlscale.cli import main
from rlscale.experiments import results
from rlscale.experiments.cost_report import check_sums, from_results, limit_tenants
from rlscale.experiments.evaluate import evaluate
from rlscale.experiments.report import render_report

TENANTS = {"alpha": 0.5, "beta": 0.25, "gamma": 0.15, "delta": 0.1}
"""'delta' only sends in the first hour (before the held-out window)."""


@pytest.fixture(scope="module")
def evaluation(scenario, tmp_path_factory, tenant_csv_trace):
    tmp = tmp_path_factory.mktemp("cost-eval")
    trace = tmp / "traffic.csv"
    tenant_csv_trace(trace, TENANTS, seed=11, only_first_hour=("delta",))
    ev = evaluate(
        scenario,
        ["static", "hpa"],
        seeds=2,
        trace=trace,
        trace_format="csv",
        include_oracle=False,
        n_top_tenants=2,
        progress=False,
    )
    return ev, results.write_results(ev, tmp / "eval")


def test_results_carry_idle_shares_and_a_timeline_that_sums_to_the_bill(evaluation):
    ev, _ = evaluation
    res = ev.results
    for label, summary in res.policies.items():
        cost = summary.mean("cost_usd")
        own = summary.tenants
        tenants = {t: agg.value for t, agg in own.cost_usd.items()}
        assert set(tenants) == {"alpha", "beta", "other"}
        assert set(own.idle_cost_usd) == set(own.busy_gpu_hours) == set(tenants)
        assert sum(tenants.values()) == pytest.approx(cost, rel=1e-9)
        idle = summary.mean("idle_cost_usd")
        assert 0.0 < idle < cost
        for t in ("alpha", "beta", "other"):
            assert 0 <= own.idle_cost_usd[t].value <= tenants[t]
        tl = res.cost_timelines[label]
        assert tl.seed == 0 and tl.start_step == res.held_out.test_starts[0]
        steps = res.held_out.episode_steps
        assert len(tl.by_pool_usd["h100"]) == math.ceil(steps / math.ceil(steps / 96))
        for split in (tl.by_pool_usd, tl.by_purchase_usd, tl.by_tenant_usd):
            assert sum(map(sum, split.values())) == pytest.approx(tl.bill_usd, rel=1e-9)
        # the recorded episode is one of the grid's: its bill is that episode's cost
        first = next(
            e
            for e in ev.episodes
            if e["policy"] == label and e["seed"] == 0 and e["start_step"] == tl.start_step
        )
        assert tl.bill_usd == pytest.approx(first["cost_usd"], rel=1e-12)
    # alpha sends half of the held-out window's tokens, beta a quarter
    static = res.policies["static"].tenants
    ratio = static.cost_usd["alpha"].value / static.cost_usd["beta"].value
    assert ratio == pytest.approx(0.6 / 0.25, rel=0.2)


def test_evaluation_report_shows_the_idle_share_per_tenant(evaluation, parse_html):
    ev, _ = evaluation
    page = parse_html(render_report(ev))
    table = next(t for t in page.tables if t[0][:3] == ["Tenant", "static: USD", "static: idle"])
    rows = {r[0]: r[1:] for r in table[1:]}
    assert set(rows) == {"alpha", "beta", "other"}
    static = ev.results.policies["static"].tenants
    share = static.idle_cost_usd["alpha"].value / static.cost_usd["alpha"].value
    assert rows["alpha"][1] == f"{100 * share:.2f}%"


def test_cost_report_from_results_sums_to_the_bill(evaluation, tmp_path, parse_html, capsys):
    ev, path = evaluation
    out = tmp_path / "cost"
    assert main(["cost-report", "--results", str(path), "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((out / "cost_report.json").read_text())
    assert check_sums(report) == []
    assert list(report["entries"]) == ["static", "hpa"] == list(line["bill_usd"])
    for label, entry in report["entries"].items():
        assert entry["bill_usd"] == pytest.approx(ev.results.mean(label, "cost_usd"))
        assert set(entry["tenants"]) == {"alpha", "beta", "other"}  # as evaluated: top 2
        assert entry["other_tenants"] == "other"
        assert sum(entry["by_pool_usd"].values()) == pytest.approx(entry["bill_usd"], rel=1e-9)
        assert sum(entry["by_purchase_usd"].values()) == pytest.approx(entry["bill_usd"])
        assert sum(v["cost_usd"] for v in entry["tenants"].values()) == pytest.approx(
            entry["bill_usd"], rel=1e-9
        )
        tl = entry["timeline"]
        for key in ("by_pool_usd", "by_purchase_usd", "by_tenant_usd"):
            assert sum(map(sum, tl[key].values())) == pytest.approx(tl["bill_usd"], rel=1e-9)
    page = parse_html((out / "cost_report.html").read_text())
    assert len(page.images) == 2  # one timeline per policy
    pools = next(t for t in page.tables if t[0][0] == "Pool")
    assert pools[0][1:] == ["static", "hpa"]
    bill_row = next(r for r in pools if r[0] == "bill")
    assert float(bill_row[1].replace(",", "")) == pytest.approx(
        report["entries"]["static"]["bill_usd"], abs=1e-4
    )
    tenants = next(t for t in page.tables if t[0][0] == "Tenant")
    assert tenants[0][1:4] == ["Cost (USD)", "of it idle (USD)", "Idle share"]


def test_fewer_top_tenants_fold_into_other_and_still_sum(evaluation):
    _, path = evaluation
    report = limit_tenants(from_results(path), 1)
    assert check_sums(report) == []
    same = limit_tenants(from_results(path), 2)  # the evaluation's own cut: 'other' stays one
    assert same == from_results(path)
    for entry in report["entries"].values():
        assert set(entry["tenants"]) == {"alpha", "other"}
        assert set(entry["timeline"]["by_tenant_usd"]) == {"alpha", "other"}


def test_cost_report_errors_exit_2(evaluation, tmp_path, capsys):
    _, path = evaluation
    out = str(tmp_path / "o")
    cases = {
        "no evaluation results at": ["--results", str(tmp_path / "missing.json")],
        "is not a JSON file": ["--results", str(_write(tmp_path / "bad.json", "{not json"))],
        "is it an evaluation": ["--results", str(_write(tmp_path / "x.json", '{"a": 1}'))],
        "rerun rlscale evaluate": ["--results", str(_strip_timelines(path, tmp_path))],
        "malformed evaluation results": [
            "--results",
            str(_write(tmp_path / "m.json", _malformed(path))),
        ],
        "go with --shadow": ["--results", str(path), "--scenario", "azure-conv"],
        "--shadow needs --scenario": ["--shadow", str(tmp_path / "s.db")],
        "no shadow database at": [
            "--shadow",
            str(tmp_path / "s.db"),
            "--scenario",
            "synthetic-2week",
        ],
    }
    for message, argv in cases.items():
        assert main(["cost-report", *argv, "--out", out]) == 2, message
        err = capsys.readouterr().err
        assert message in err, err
    assert not (tmp_path / "o").exists()


def _write(path, text):
    path.write_text(text)
    return path


def _strip_timelines(path, tmp_path):
    data = json.loads(path.read_text())
    del data["cost_timelines"]
    return _write(tmp_path / "old.json", json.dumps(data))


def _malformed(path):
    data = json.loads(path.read_text())
    data["policies"]["static"]["cost_usd"] = "expensive"
    return json.dumps(data)
