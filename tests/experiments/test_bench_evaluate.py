"""rlscale bench evaluate on a tiny grid: in process and on two local processes, each
configuration in its own process, one JSON object last."""

from __future__ import annotations

import json

import pytest
import yaml

from rlscale.cli import main


@pytest.fixture
def quick_yaml(quick_raw, tmp_path):
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(quick_raw()))
    return path


def test_bench_evaluate_times_the_grid_on_each_backend(quick_yaml, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "evaluate", "--scenario", str(quick_yaml), "--policy", "static"]
    argv += ["--policy", "hpa", "--seeds", "2", "--max-windows", "2", "--no-oracle"]
    assert main([*argv, "--configs", "in_process,local", "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == line
    configs = line["configs"]
    assert list(configs) == ["in_process", "local"]
    one, local = configs["in_process"], configs["local"]
    assert (one["backend"], one["workers"]) == ("in-process", 1)
    assert local["workers"] >= 1 and local["backend"].startswith(("local", "in-process"))
    for row in (one, local):
        # 2 policies x 2 seeds x 2 windows, in the grid's order, each timed by its worker
        assert [(t["policy"], t["seed"]) for t in row["tasks"]] == [
            (p, s) for p in ("static", "hpa") for s in (0, 1) for _ in range(2)
        ]
        assert all(t["cpu_s"] > 0 for t in row["tasks"])
        assert row["wall_s"] > 0 and row["process_cpu_s"] > 0
        task_cpu = sum(t["cpu_s"] for t in row["tasks"])
        assert row["task_cpu_s"] == pytest.approx(task_cpu)
        assert row["cores_obtained"] == pytest.approx(task_cpu / row["grid_wall_s"])
        assert 0 < row["cores_obtained"] <= row["workers"] * 1.05
        assert len(row["load_avg_before"]) == 3
    assert one["fixed"] == {}
    if local["workers"] > 1:  # fixed costs of spawned workers
        assert local["fixed"]["worker_setup_s"] > 0 and local["fixed"]["per_task_s"] >= 0
    ratio = line["ratio_to_in_process"]["local"]
    assert ratio == pytest.approx(local["wall_s"] / one["wall_s"])
    assert line["meets_target"]["local"] == (ratio <= line["target_ratio"])


@pytest.mark.parametrize(
    ("configs", "message"),
    [("local,ray", "need in_process"), ("in_process,gpu", "configs must be in")],
)
def test_bench_evaluate_refuses_bad_configs(configs, message, capsys):
    assert main(["bench", "evaluate", "--configs", configs]) == 2
    assert message in capsys.readouterr().err
