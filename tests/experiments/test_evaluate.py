"""``rlscale evaluate``: the grid, the statistics, --trace, the report and the MLflow run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlscale.agents.observe import EpisodeResult
from rlscale.common.tracking import TrackingError, metric_key, require_mlflow
from rlscale.envs.scenario import ScenarioError
from rlscale.experiments import evaluate as ev
from rlscale.experiments import grid, results
from rlscale.experiments.evaluate import evaluate
from rlscale.experiments.grid import PolicySpec
from rlscale.experiments.report import gap_rows, render_report, write_report
from rlscale.experiments.results import log_evaluation, mean_ci95

HEADLINE_METRICS = (
    "cost_usd",
    "cost_per_million_tokens_usd",
    "slo_attainment",
    "ttft_p50_s",
    "ttft_p95_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p95_s",
    "tpot_p99_s",
    "dropped",
    "scale_events",
    "cold_starts",
    "preemptions",
)


# --- statistics ----------------------------------------------------------------------------------


def test_identical_runs_give_a_zero_width_interval():
    # 0.1 + 0.2 style values whose float mean is not exactly the value
    out = mean_ci95([0.30000000000000004] * 5)
    assert out == {"mean": 0.30000000000000004, "ci95": [0.30000000000000004] * 2}


def test_known_sample_gives_the_student_t_interval():
    # mean 3, s = sqrt(2.5), t(0.975, 4 dof) = 2.7764451051977987 (tables: 2.776)
    out = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5.0)
    assert out["mean"] == pytest.approx(3.0)
    assert out["ci95"] == pytest.approx([3.0 - half, 3.0 + half], rel=1e-12)
    assert half == pytest.approx(1.9632, abs=1e-4)


def test_one_seed_has_no_interval():
    assert mean_ci95([7.0]) == {"mean": 7.0, "ci95": [None, None]}


def test_tenants_beyond_the_top_n_are_summed_as_other():
    summary = {
        **dict.fromkeys(results.SCALAR_METRICS, 1.0),
        "gpu_hours": {"h100": 2.0, "spot": 1.0},
        "cost_by_pool_usd": {"h100": 8.0, "spot": 2.0},
        "cost_by_tenant_usd": {"a": 5.0, "b": 3.0, "c": 1.5, "d": 0.5},
    }
    result = EpisodeResult("p", 0, 0, summary)
    tenants = results.top_tenants([result], 2)
    assert tenants == ["a", "b"]
    flat = results.flatten_summary(summary, {"h100": "on_demand", "spot": "spot"}, tenants)
    assert flat["cost_per_tenant_usd/a"] == 5.0 and flat["cost_per_tenant_usd/b"] == 3.0
    assert flat["cost_per_tenant_usd/other"] == pytest.approx(2.0)
    assert "cost_per_tenant_usd/c" not in flat
    assert flat["gpu_hours/h100"] == 2.0 and flat["cost_by_pool_usd/spot"] == 2.0
    assert flat["cost_by_purchase_usd/on_demand"] == 8.0
    assert flat["cost_by_purchase_usd/spot"] == 2.0


# --- the grid ------------------------------------------------------------------------------------


def test_grid_runs_every_window_per_seed_or_cycles_them():
    spec = PolicySpec("static")
    every = grid.grid_tasks([spec], [0, 1], [10, 20, 30], "all")
    assert [(t.seed, t.start_step) for t in every] == [(s, w) for s in (0, 1) for w in (10, 20, 30)]
    assert [t.record for t in every] == [True] + [False] * 5
    cycled = grid.grid_tasks([spec], [0, 1, 2, 3], [10, 20, 30], "cycle")
    assert [(t.seed, t.start_step) for t in cycled] == [(0, 10), (1, 20), (2, 30), (3, 10)]
    with pytest.raises(ScenarioError, match="windows must be"):
        grid.grid_tasks([spec], [0], [10], "some")  # type: ignore[arg-type]


def test_policy_argument_parsing(tmp_path):
    assert grid.parse_policy_arg("static") == PolicySpec("static")
    params = tmp_path / "tuned.json"
    params.write_text(json.dumps({"params": {"replicas": {"h100": 3}}}))
    spec = grid.parse_policy_arg(f"static={params}")
    assert spec.params_dict() == {"replicas": {"h100": 3}}  # a tuning result's params
    assert grid.parse_policy_arg("oracle").per_episode
    with pytest.raises(ScenarioError, match="no such file"):
        grid.parse_policy_arg("static=/nonexistent/tuned.json")
    with pytest.raises(ScenarioError, match=r"NAME or NAME=PARAMS\.json"):
        grid.parse_policy_arg("static=")
    labels = grid.with_labels([PolicySpec("static"), PolicySpec("static", params)])
    assert [s.display for s in labels] == ["static", "static[tuned]"]


@pytest.fixture(scope="module")
def two_policy_eval(scenario):
    """static and a smaller static fleet, three seeds, two held-out windows, no oracle."""
    return evaluate(
        scenario,
        [
            PolicySpec("static"),
            PolicySpec("static", {"replicas": {"h100": 1}}, label="static-1"),
        ],
        seeds=3,
        max_windows=2,
        include_oracle=False,
        progress=False,
    )


def test_results_json_shape(two_policy_eval, tmp_path):
    path = results.write_results(two_policy_eval, tmp_path)
    data = json.loads(path.read_text())  # strict JSON: no NaN
    assert data["scenario"] == "quick"
    assert data["seeds"] == [0, 1, 2]
    assert data["trace"] == {"format": "synthetic", "path": None, "source": "scenario"}
    assert data["oracle"] is None
    assert len(data["held_out"]["test_starts"]) == 2
    # held-out windows lie after the split boundary: never seen by tuning or training
    assert min(data["held_out"]["test_starts"]) >= data["held_out"]["boundary_step"]
    assert list(data["policies"]) == ["static", "static-1"]
    for metrics in data["policies"].values():
        for name in (*HEADLINE_METRICS, "gpu_hours/h100", "gpu_hours/a100"):
            assert name in metrics, name
        assert "cost_per_tenant_usd/default" in metrics
        for agg in metrics.values():
            assert set(agg) == {"mean", "ci95"} and len(agg["ci95"]) == 2
            lo, hi = agg["ci95"]
            assert lo <= agg["mean"] <= hi
    static = data["policies"]["static"]
    # two on-demand h100s for half an hour under every seed: identical cost, zero-width CI
    assert static["cost_usd"]["mean"] == pytest.approx(4.0 * 2 * 0.5)
    assert static["cost_usd"]["ci95"][0] == static["cost_usd"]["ci95"][1]
    assert static["gpu_hours/h100"]["mean"] == pytest.approx(1.0)
    assert data["policies"]["static-1"]["cost_usd"]["mean"] == pytest.approx(2.0)
    assert len(two_policy_eval.episodes) == 2 * 3 * 2
    assert set(two_policy_eval.timelines) == {"static", "static-1"}


def test_evaluation_is_deterministic(two_policy_eval, scenario):
    again = evaluate(
        scenario,
        [PolicySpec("static", {"replicas": {"h100": 1}}, label="static-1")],
        seeds=3,
        max_windows=2,
        include_oracle=False,
        progress=False,
    )
    assert again.results.policies["static-1"] == two_policy_eval.results.policies["static-1"]


def test_oracle_is_built_per_episode_with_its_window_and_seed(scenario, fake_oracle):
    out = evaluate(scenario, ["static"], seeds=2, max_windows=2, progress=False)
    starts = out.results.held_out.test_starts
    assert out.results.oracle == "oracle"
    assert list(out.results.policies) == ["static", "oracle"]
    assert sorted((c["seed"], c["start_step"]) for c in fake_oracle) == sorted(
        (s, w) for s in (0, 1) for w in starts
    )
    rows, best, _ = gap_rows(out.results)
    by_policy = {r["policy"]: r for r in rows}
    assert best == "static"
    assert by_policy["oracle"]["closed"] == pytest.approx(1.0)
    assert by_policy["static"]["closed"] == pytest.approx(0.0)
    assert by_policy["static"]["over_oracle_usd"] == pytest.approx(4.0 * 0.5)


def test_oracle_time_per_window_is_reported(scenario, monkeypatch):
    # a stand-in oracle that spends 0.2 s of CPU planning each window: results.json reports
    # the oracle's CPU time per episode window, and the Markdown table prints it
    from rlscale.agents import registry
    from rlscale.agents.static import StaticPolicy
    from rlscale.experiments.report import markdown_table

    def slow_factory(sc, params):
        tic = time.process_time()
        while time.process_time() - tic < 0.2:
            pass
        return StaticPolicy({"h100": 1, "a100": 0}, name="oracle")

    real = registry.entry("oracle")
    monkeypatch.setitem(
        registry._ENTRIES, "oracle", dataclasses.replace(real, factory=slow_factory)
    )
    out = evaluate(scenario, ["static"], seeds=2, max_windows=1, progress=False)
    timing = out.results.oracle_cpu_s
    assert 0.2 <= timing.mean < 5.0
    assert timing.interval is not None  # two episodes, an interval
    assert "oracle: " in markdown_table(out.results).splitlines()[-1]
    assert "s of CPU per episode window" in markdown_table(out.results)
    without = evaluate(
        scenario, ["static"], seeds=1, max_windows=1, include_oracle=False, progress=False
    )
    assert without.results.oracle_cpu_s is None
    assert "CPU" not in markdown_table(without.results)


# --- --trace -------------------------------------------------------------------------------------


TENANTS = {"alpha": 0.6, "beta": 0.3, "gamma": 0.1}


def test_trace_replaces_the_workload_and_is_named(scenario, tmp_path, tenant_csv_trace):
    trace = tmp_path / "my-traffic.csv"
    tenant_csv_trace(trace, TENANTS)
    replaced = ev.with_trace(scenario, trace, "csv")
    assert replaced.workload.kind == "csv" and replaced.workload.path == str(trace.resolve())
    assert replaced.workload.synthetic is None
    assert replaced.pools == scenario.pools and replaced.slo == scenario.slo

    out = evaluate(
        scenario,
        ["static"],
        seeds=1,
        trace=trace,
        trace_format="csv",
        include_oracle=False,
        n_top_tenants=2,
        progress=False,
    )
    res = out.results
    assert res.trace == results.TraceInfo("csv", str(trace.resolve()), "--trace")
    # ~2 h of trace, 0.5 h episodes: the last quarter (one window) is held out
    held = res.held_out
    assert held.total_steps in (239, 240)
    assert held.test_starts == [held.boundary_step] == [int(0.75 * held.total_steps)]
    assert set(res.policies["static"].tenants.cost_usd) == {"alpha", "beta", "other"}
    assert res.policies["static"].mean("completed") > 0.2 * 3 * 1800


def test_trace_mean_rps_rescales_the_replayed_trace(scenario, tmp_path):
    """Another trace family at the load the pools were sized for: the shape is kept, the mean
    rate is the one asked for."""
    from rlscale.envs.simulator import scenario_workload

    trace = tmp_path / "t.csv"
    # a shaped trace: 1 req/s for an hour, then 5 req/s for an hour (mean 3)
    times = np.concatenate([np.arange(0, 3600, 1.0), 3600 + np.arange(0, 3600, 0.2)])
    lines = ["timestamp_s,prompt_tokens,output_tokens"] + [f"{t:.1f},500,100" for t in times]
    trace.write_text("\n".join(lines) + "\n")
    recorded = scenario_workload(ev.with_trace(scenario, trace, "csv"))
    # half the rate: each request kept with probability 1/2 (above 1, copies are superposed
    # with circular shifts, which spread a recorded trace's bursts on purpose: workload.py)
    rescaled = scenario_workload(ev.with_trace(scenario, trace, "csv", target_mean_rps=1.5))
    assert recorded.mean_rps == pytest.approx(3.0, rel=0.02)
    assert rescaled.mean_rps == pytest.approx(1.5, rel=0.05)
    half = rescaled.arrivals.size // 2
    first, second = rescaled.arrivals[:half].sum(), rescaled.arrivals[half:].sum()
    assert second / first == pytest.approx(5.0, rel=0.1)  # the same shape, thinned
    with pytest.raises(ScenarioError, match="rescales a --trace"):
        evaluate(scenario, ["static"], trace_mean_rps=5.0, progress=False)


def test_trace_errors_name_the_problem(scenario, tmp_path, tenant_csv_trace):
    trace = tmp_path / "t.csv"
    tenant_csv_trace(trace, TENANTS, hours=1.0)
    with pytest.raises(ScenarioError, match="go together"):
        evaluate(scenario, ["static"], trace=trace, progress=False)
    with pytest.raises(ScenarioError, match="--trace-format must be one of"):
        ev.with_trace(scenario, trace, "parquet")
    with pytest.raises(ScenarioError, match="no such file"):
        ev.with_trace(scenario, tmp_path / "missing.csv", "csv")
    with pytest.raises(ScenarioError, match="unknown policy 'nope'"):
        evaluate(scenario, ["nope"], progress=False)


# --- report --------------------------------------------------------------------------------------


def test_report_has_every_section_and_escapes_text(scenario, fake_oracle, tmp_path):
    out = evaluate(
        scenario,
        [PolicySpec("static", label="<b>static</b>")],
        seeds=2,
        max_windows=1,
        progress=False,
    )
    page = write_report(out, tmp_path).read_text()
    for section in (
        "setup",
        "load-capacity",
        "cost-breakdown",
        "cost-slo",
        "gap",
        "metrics",
        "gpu-hours",
        "tenants",
        "method",
    ):
        assert f'<section id="{section}">' in page, section
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 3 and all(s.startswith("data:image/png;base64,") for s in images)
    assert "Best baseline&#x27;s gap closed</th>" in page
    assert "&lt;b&gt;static&lt;/b&gt;" in page and "<b>static</b>" not in page
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r'(src|href)="(https?:|//)', page)
    assert "<script" not in page


def test_report_without_oracle_says_the_gap_table_needs_it(two_policy_eval):
    page = render_report(two_policy_eval)
    assert "The gap table needs the oracle" in page
    assert page.count("<img ") == 3


# --- MLflow --------------------------------------------------------------------------------------


def test_metric_keys_are_namespaced_and_valid():
    assert metric_key("hpa", "cost_usd") == "hpa/cost_usd"
    assert metric_key("oracle", "gpu_hours/h100") == "oracle/gpu_hours/h100"
    assert metric_key("static[tuned]", "x") == "static_tuned_/x"
    assert metric_key("a/b", "cost_per_tenant_usd/k@y") == "a_b/cost_per_tenant_usd/k_y"


def test_missing_mlflow_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    with pytest.raises(TrackingError, match=r"pip install 'rlscale\[eval\]'"):
        require_mlflow()


def test_mlflow_run_has_metrics_params_and_artifacts(two_policy_eval, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results_path = results.write_results(two_policy_eval, tmp_path / "out")
    report_path = write_report(two_policy_eval, tmp_path / "out")
    run = log_evaluation(two_policy_eval.results, [results_path, report_path], uri=uri)
    assert re.fullmatch(r"quick__evaluate__3__\d+", run.run_name)

    client = MlflowClient(tracking_uri=uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == run.run_name
    assert client.get_experiment(run.experiment_id).name == "rlscale-evaluate"
    res = two_policy_eval.results
    assert got.data.metrics["static/cost_usd"] == pytest.approx(res.mean("static", "cost_usd"))
    assert "static-1/gpu_hours/h100" in got.data.metrics
    assert got.data.params["scenario"] == "quick" and got.data.params["n_seeds"] == "3"
    names = {a.path for a in client.list_artifacts(run.run_id)}
    assert names == {"results.json", "report.html"}
    local = client.download_artifacts(run.run_id, "results.json", str(tmp_path / "dl"))
    assert (
        json.loads(Path(local).read_text())["policies"]
        == json.loads(results_path.read_text())["policies"]
    )
    # the artifacts sit beside the database, not in ./mlruns
    assert (tmp_path / "mlartifacts" / "rlscale-evaluate").is_dir()


# --- the command ---------------------------------------------------------------------------------


@pytest.mark.needs_data
def test_cli_end_to_end_on_azure_conv(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'runs.db'}")
    parser = argparse.ArgumentParser(prog="rlscale")
    ev.add_evaluate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            *("evaluate", "--scenario", "azure-conv", "--policy", "static", "--seeds", "2"),
            *("--out", str(tmp_path / "eval"), "--no-progress"),
        ]
    )
    assert ev.run_evaluate(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["scenario"] == "azure-conv" and results["seeds"] == [0, 1]
    assert "static" in results["policies"]
    assert (tmp_path / "eval" / "report.html").read_text().count("data:image/png;base64,") == 3
    assert line["mlflow_run_id"] and (tmp_path / "runs.db").exists()
    assert not (tmp_path / "mlruns").exists()


def test_cli_tuned_adds_the_tuned_baselines_beside_the_named_policies(scenario, tmp_path, capsys):
    import yaml

    scenario_file = tmp_path / "quick.yaml"
    scenario_file.write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "static.json").write_text(json.dumps({"params": {"replicas": {"h100": 3}}}))
    parser = argparse.ArgumentParser(prog="rlscale")
    ev.add_evaluate_parser(parser.add_subparsers(dest="command"))

    def run(*extra: str) -> dict:
        args = parser.parse_args(
            [
                *("evaluate", "--scenario", str(scenario_file), "--seeds", "1"),
                *("--max-windows", "1", "--no-oracle", "--no-mlflow", "--no-progress"),
                *("--out", str(tmp_path / "eval"), *extra),
            ]
        )
        assert ev.run_evaluate(args) == 0
        return json.loads((tmp_path / "eval" / "results.json").read_text())

    res = run("--policy", "hpa", "--tuned", str(tuned))
    assert set(res["policies"]) == {"hpa", "static[tuned]"}
    assert "tuned baselines from" in capsys.readouterr().err
    # nothing tuned there: every baseline with its defaults, and the output says so
    res = run("--tuned", str(tmp_path / "nothing"))
    assert {"static", "hpa", "predictive"} <= set(res["policies"])
    assert "every baseline with its defaults" in capsys.readouterr().err


def test_bad_seeds_are_rejected(scenario):
    with pytest.raises(ScenarioError, match="--seeds must be at least 1"):
        evaluate(scenario, ["static"], seeds=0, progress=False)


def test_cli_without_mlflow_fails_before_running_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    parser = argparse.ArgumentParser(prog="rlscale")
    ev.add_evaluate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--scenario", "quick", "--out", str(tmp_path / "o")])
    assert ev.run_evaluate(args) == 2
    assert "pip install 'rlscale[eval]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_parameter_file_fails_before_the_grid(scenario, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ScenarioError, match="cannot read parameters"):
        evaluate(scenario, ["static", PolicySpec("static", bad)], progress=False)


def test_building_the_cli_parser_does_not_load_the_simulator():
    # `rlscale --help` imports this module for its parser; numba kernels must not come along
    import subprocess

    code = (
        "import sys, rlscale.experiments.evaluate as e, argparse;"
        "e.add_evaluate_parser(argparse.ArgumentParser().add_subparsers());"
        "print(sorted(m for m in ('numba', 'scipy.stats', 'rlscale.envs.simulator')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_markdown_table_marks_the_best_baseline_and_the_gap_closed(results_d0578ef):
    from rlscale.experiments.report import markdown_table

    def agg(mean, half=0.0):
        return {"mean": mean, "ci95": [mean - half, mean + half]}

    def policy(cost, attainment):
        return {
            "cost_usd": agg(cost, 0.5),
            "slo_attainment": agg(attainment),
            "ttft_p95_s": agg(0.2),
            "scale_events": agg(3.0),
        }

    policies = {
        "static": policy(20.0, 1.0),
        "hpa": policy(15.0, 0.995),
        "cheap": policy(5.0, 0.90),  # cheapest, but misses the SLO: no bar
        "oracle": policy(10.0, 0.999),
    }
    base = results.load_results(results_d0578ef)  # target attainment 0.99
    made = dataclasses.replace(
        base,
        oracle="oracle",
        oracle_cpu_s=None,
        baselines=["static", "hpa", "cheap"],
        policies={k: results.PolicySummary.model_validate(v) for k, v in policies.items()},
    )
    lines = markdown_table(made).splitlines()
    assert lines[0].startswith("| policy | cost (USD)")
    by_name = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert "**hpa**" in by_name and "| 0% |" in by_name["**hpa**"]
    assert "15.00 ± 0.50" in by_name["**hpa**"] and "+50%" in by_name["**hpa**"]
    assert "-100%" in by_name["static"]  # (15 - 20) / (15 - 10)
    assert "misses SLO" in by_name["cheap"]


def test_evaluation_runs_held_out_windows_only(two_policy_eval, scenario):
    from rlscale.envs.splits import split_workload

    split, _ = split_workload(scenario)
    starts = {e["start_step"] for e in two_policy_eval.episodes}
    assert starts and min(starts) >= split.boundary_step
    assert max(starts) + split.episode_steps <= split.total_steps


def test_results_json_reads_back_equal_to_what_was_written(two_policy_eval, tmp_path):
    path = results.write_results(two_policy_eval, tmp_path)
    data = json.loads(path.read_text())
    assert data["version"] == results.RESULTS_VERSION
    assert results.load_results(path) == two_policy_eval.results
    assert results.json_safe(results.load_results(path).to_json()) == data


def test_request_classes_are_reported_per_class(quick_raw, tmp_path):
    """A scenario with batch work: per-class cost summing to the bill, the batch accounting
    and attainment in results.json, and the request-class section in the report."""
    from rlscale.envs.scenario import scenario_from_dict

    raw = quick_raw("quick-batch")
    raw["workload"] = {**raw["workload"], "batch": {"share": 0.3, "deadline_h": 0.25}}
    out = evaluate(
        scenario_from_dict(raw),
        ["static"],
        seeds=2,
        max_windows=1,
        include_oracle=False,
        progress=False,
    )
    metrics = out.results.policies["static"]
    by_class = [metrics.mean(f"cost_by_class_usd/{c}") for c in ("interactive", "batch")]
    assert sum(by_class) == pytest.approx(metrics.mean("cost_usd"), rel=1e-9)
    assert by_class[1] > 0.0
    arrived = metrics.mean("batch/arrived")
    accounted = sum(
        metrics.mean(f"batch/{k}") for k in ("completed", "expired", "queued", "in_flight")
    )
    assert arrived > 0 and accounted == pytest.approx(arrived, rel=1e-9)
    assert 0.0 <= metrics.mean("batch_attainment") <= 1.0
    html = write_report(out, tmp_path).read_text()
    assert 'id="classes"' in html and "Batch within deadline" in html
    # a scenario without batch work has no such section
    plain = evaluate(
        scenario_from_dict(quick_raw()),
        ["static"],
        seeds=1,
        max_windows=1,
        include_oracle=False,
        progress=False,
    )
    assert 'id="classes"' not in render_report(plain)
