"""The scale-out model: list scheduling with start-up and per-task overhead, by hand."""

from __future__ import annotations

import json

import pytest

from rlscale.experiments.scaleout import main, makespan, model_inputs, scaleout


def test_equal_tasks_share_the_workers():
    assert makespan([10.0] * 4, 1) == 40.0
    assert makespan([10.0] * 4, 2) == 20.0
    assert makespan([10.0] * 4, 4) == 10.0
    assert makespan([10.0] * 4, 64) == 10.0  # more workers than tasks: one task each
    assert makespan([10.0] * 5, 2) == 30.0  # the odd one out runs alone


def test_one_long_task_dominates():
    tasks = [100.0, 1.0, 1.0, 1.0]
    assert makespan(tasks, 1) == 103.0
    assert makespan(tasks, 2) == 100.0  # the short ones all go to the other worker
    assert makespan(tasks, 64) == 100.0


def test_longest_first_is_list_scheduling_not_the_optimum():
    # LPT: 3|3, then 2 -> 5|3, 2 -> 5|5, 2 -> 7|5; the optimum (3+3 | 2+2+2) is 6
    assert makespan([2.0, 3.0, 2.0, 3.0, 2.0], 2) == 7.0


def test_overheads_add_start_up_once_and_per_task_to_each():
    assert makespan([10.0, 10.0], 2, startup_s=5.0, per_task_s=1.0) == 16.0
    assert makespan([10.0, 10.0], 1, startup_s=5.0, per_task_s=1.0) == 27.0
    assert makespan([], 4, startup_s=5.0) == 5.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="workers"):
        makespan([1.0], 0)
    with pytest.raises(ValueError, match="overheads"):
        makespan([1.0], 1, per_task_s=-1.0)
    with pytest.raises(ValueError, match="durations"):
        makespan([-1.0], 1)
    with pytest.raises(ValueError, match="no task"):
        scaleout([])
    with pytest.raises(ValueError, match="repeats"):
        scaleout([1.0], repeats=[0])


def test_scaleout_repeats_the_grid_per_worker_count():
    table = scaleout([4.0, 2.0], workers=[1, 2], repeats=[1, 3], per_task_s=0.5)
    assert table["tasks"] == [2, 6]
    assert table["wall_s"]["1"] == [7.0, 21.0]
    # 3 copies on 2 workers, each task 0.5 s longer: 4.5 -> A, 4.5 -> B, 4.5 -> A (9),
    # 2.5 -> B (7), 2.5 -> B (9.5), 2.5 -> A (11.5)
    assert table["wall_s"]["2"] == [4.5, 11.5]


def _bench(tasks, ray_fixed):
    return {
        "grid": {"describe": "a grid"},
        "configs": {"in_process": {"tasks": tasks}, "ray": {"fixed": ray_fixed}},
    }


def test_the_cli_reads_bench_json_and_draws_the_figure(tmp_path, capsys):
    bench = _bench(
        [{"cpu_s": 50.0}, {"cpu_s": 1.0}],
        {"ray_start_s": 4.0, "worker_setup_s": 3.0, "per_task_s": 0.002},
    )
    assert model_inputs(bench) == {"task_s": [50.0, 1.0], "startup_s": 7.0, "per_task_s": 0.002}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    png = tmp_path / "fig" / "scaleout.png"
    assert main([str(path), "--out", str(png), "--workers", "1,2"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["table"]["wall_s"]["2"][0] == pytest.approx(7.0 + 50.002)
    assert line["table"]["wall_s"]["1"][0] == pytest.approx(7.0 + 51.004)


def test_the_cli_names_what_a_bad_json_lacks(tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_bench([{"cpu_s": 1.0}], {"ray_start_s": 1.0})))
    assert main([str(path), "--out", str(tmp_path / "x.png")]) == 2
    assert "worker_setup_s" in capsys.readouterr().err
