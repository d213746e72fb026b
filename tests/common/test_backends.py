"""Backends: the same grid in this process, in local processes and on Ray gives the same
numbers; one Ray cluster runs a sweep and an evaluation grid (the issue's must-show test);
bad settings, a missing Ray and a second cluster say what to do; a failed task ends a grid."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlscale.common.backends import Backend, BackendError, Job, ray_init, run_tasks
from rlscale.envs.scenario import scenario_from_dict
from rlscale.experiments.evaluate import evaluate
from rlscale.experiments.grid import PolicySpec

POLICIES = [PolicySpec("static"), PolicySpec("hpa"), PolicySpec("predictive")]

# a sweep's trials: 4 envs x 64 steps = 256 env steps per PPO update; validations at 256, 512
TINY = [
    "--total-timesteps", "512", "--eval-every", "256", "--n-envs", "4", "--n-steps", "64",
    "--batch-size", "128", "--n-epochs", "1", "--net-arch", "16", "16", "--eval-windows", "1",
    "--checkpoint-every", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def quick(quick_raw):
    return scenario_from_dict(quick_raw())


def _grid(quick, backend):
    """Three baselines and the oracle (one solve per task), two seeds, two windows."""
    ev = evaluate(quick, POLICIES, seeds=2, max_windows=2, progress=False, backend=backend)
    # measurements of this run, not results: when it ran, and the CPU time the oracle took
    ev.timing = ev.results.oracle_cpu_s
    ev.results = dataclasses.replace(ev.results, created_utc=None, oracle_cpu_s=None)
    return ev


@pytest.fixture(scope="module")
def in_process(quick):
    return _grid(quick, Backend("local", workers=1))


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster of 2 CPUs for this module's tests, started as the commands start
    one (:func:`ray_init`) and stopped when the module's tests are done."""
    pytest.importorskip("ray")
    ray = ray_init(Backend("ray", workers=2), join=False)
    yield ray
    ray.shutdown()


def test_in_process_grid_has_the_oracle_and_distinct_policies(in_process):
    res = in_process.results
    assert res.oracle == "oracle" and list(res.policies)[-1] == "oracle"
    costs = [m.mean("cost_usd") for m in res.policies.values()]
    assert len(set(costs)) == len(costs)  # an equal result below is not a constant grid
    assert len(in_process.episodes) == 4 * 2 * 2
    assert in_process.timing.mean > 0.0  # the oracle's CPU time per window is reported


def test_local_processes_give_identical_results(quick, in_process):
    ev = _grid(quick, Backend("local", workers=2))
    assert ev.results == in_process.results
    assert ev.episodes == in_process.episodes


def test_one_ray_cluster_runs_a_sweep_and_an_evaluation_grid(
    quick, in_process, ray_cluster, quick_raw, tmp_path, monkeypatch, capsys
):
    """The issue's must-show test, on the module's one cluster: an evaluation grid on Ray
    gives the in-process numbers; a two-trial sweep runs its trials on the same cluster, logs
    a parent run and a child run per trial to MLflow, and registers its best trial."""
    ray = ray_cluster
    cluster = ray.get_runtime_context().gcs_address
    ev = _grid(quick, Backend("ray"))
    assert ev.results == in_process.results
    assert ev.episodes == in_process.episodes

    pytest.importorskip("stable_baselines3")
    pytest.importorskip("mlflow")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ray.tune")
    pytest.importorskip("optuna")
    from mlflow import MlflowClient

    from rlscale.cli import main
    from rlscale.training.model_registry import CHALLENGER_ALIAS, DEFAULT_MODEL_NAME
    from rlscale.training.sweep import OBJECTIVE, OUTCOME_TAG, PARENT_TAG, SEARCH_SPACE

    scenario = tmp_path / "quick-sweep.yaml"
    scenario.write_text(yaml.safe_dump(quick_raw("quick-sweep")))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "sweep"
    argv = [
        "sweep", "--scenario", str(scenario), "--trials", "2", "--backend", "ray",
        "--address", cluster, "--out", str(out_dir), "--reduction-factor", "2", *TINY,
    ]  # fmt: skip
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, (out + err)[-3000:]
    # it ran on the cluster it was given, and left it running: it did not start it
    assert ray.is_initialized() and ray.get_runtime_context().gcs_address == cluster
    assert "Trial status:" in out + err  # Tune's own live view of the trials
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["trials"] == 2 and summary["error"] == 0
    assert summary["finished"] >= 1 and summary["finished"] + summary["stopped"] == 2

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rlscale.command"] == "sweep"
    assert parent.data.params["trials"] == "2" and parent.data.params["search"] == "optuna-tpe"
    # flags fix a setting: n_steps and batch_size were given, so they were not searched
    searched = set(json.loads(parent.data.params["search_space"]))
    assert searched == set(SEARCH_SPACE) - {"n_steps", "batch_size"}
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "trials.json",
        "trials.csv",
    }

    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    )
    assert len(children) == 2
    for child in children:
        # each trial is a full training run: its config, its validations, its outcome
        assert child.data.params["total_timesteps"] == "512"
        assert child.data.params["scenario"].endswith("quick-sweep.yaml")
        assert "eval/cost_usd" in child.data.metrics
        outcome = child.data.tags[OUTCOME_TAG]
        assert child.info.status == {"finished": "FINISHED", "stopped": "KILLED"}[outcome]
    # the trials drew different settings (TPE's first draws are seeded random samples)
    lrs = {child.data.params["learning_rate"] for child in children}
    assert len(lrs) == 2

    # only the best trial becomes a registry version, with the alias challenger
    mv = client.get_model_version_by_alias(DEFAULT_MODEL_NAME, CHALLENGER_ALIAS)
    assert int(mv.version) == summary["model_version"] == 1
    assert mv.run_id == summary["best_run_id"] == parent.data.tags["rlscale.sweep.best_run_id"]
    assert len(client.search_model_versions(f"name = '{DEFAULT_MODEL_NAME}'")) == 1
    best = client.get_run(mv.run_id)
    assert best.data.tags[OUTCOME_TAG] == "finished"
    assert best.data.tags[PARENT_TAG] == parent.info.run_id

    # the final table: printed, and saved as JSON and CSV, best first
    rows = json.loads((out_dir / "trials.json").read_text())
    assert len(rows) == 2 and rows[0]["mlflow_run_id"] == mv.run_id
    finished = [r for r in rows if r["outcome"] == "finished"]
    assert rows[0][OBJECTIVE] == min(r[OBJECTIVE] for r in finished)
    assert rows[0][OBJECTIVE] == pytest.approx(summary["best_objective_usd"])
    # what was ranked is what was registered: the export of the validation the table names
    manifest = client.download_artifacts(mv.run_id, "policy/manifest.json", str(out_dir))
    training = json.loads(Path(manifest).read_text())["training"]
    assert training["selected_timesteps"] == rows[0]["selected_timesteps"]
    with (out_dir / "trials.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["mlflow_run_id"] for r in table] == [r["mlflow_run_id"] for r in rows]
    assert "learning_rate" in table[0] and "n_steps" not in table[0]
    assert f"registered as {DEFAULT_MODEL_NAME} version 1, alias {CHALLENGER_ALIAS}" in out
    assert any(line.startswith("* ") and rows[0]["trial"] in line for line in out.splitlines())


def test_a_second_cluster_is_refused_while_one_is_joined(ray_cluster, monkeypatch):
    ray = ray_cluster
    cluster = ray.get_runtime_context().gcs_address
    # the cluster already joined: by no address, by its own, by $RAY_ADDRESS naming it
    assert ray_init(Backend("ray")) is ray
    assert ray_init(Backend("ray", address=cluster)) is ray
    monkeypatch.setenv("RAY_ADDRESS", cluster)
    assert ray_init(Backend("ray")) is ray
    # another one: an error that names both, never a run on the wrong cluster
    other = "10.255.255.1:6379"
    said = f"connected to the Ray cluster at {cluster}, and --address asks for {other}"
    with pytest.raises(BackendError, match=re.escape(said)):
        ray_init(Backend("ray", address=other))
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.255.255.1:10001")
    with pytest.raises(BackendError, match=re.escape("$RAY_ADDRESS asks for ray://10.255")):
        ray_init(Backend("ray"))
    # a sweep with --backend local runs Tune on a cluster of its own, whatever $RAY_ADDRESS
    # says: the one joined serves
    assert ray_init(Backend("local"), join=False) is ray
    assert ray.get_runtime_context().gcs_address == cluster


def test_a_failed_task_ends_a_local_process_grid_at_once(tmp_path, monkeypatch):
    # spawned workers import the job's module by name: tests/common/failing_job.py
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import failing_job

    job = Job(failing_job.setup, failing_job.run, str(tmp_path))
    tasks = list(range(40))  # task 0 fails; the others take 0.3 s each, 5.9 s on 2 workers
    tic = time.perf_counter()
    with pytest.raises(ValueError, match="task 0 failed"):
        run_tasks(job, tasks, Backend("local", workers=2), progress=False)
    ran = sorted(int(p.stem) for p in tmp_path.glob("*.done"))
    # only the tasks already handed to a worker finish; the queued ones are dropped
    assert len(ran) <= 8, ran
    assert time.perf_counter() - tic < 30.0


def test_tuning_is_identical_on_every_backend(quick, ray_cluster):
    from rlscale.agents.tuning import tune_baseline

    space = {"target_utilization": [0.5, 0.8], "scale_down_stabilization_s": [0.0, 300.0]}
    kw = {"seeds": (0, 1), "max_windows": 2, "space": space, "progress": False}
    one = tune_baseline("hpa", quick, backend=Backend("local", workers=1), **kw)
    assert len(one["trials"]) == 5 and len({t["cost_usd"] for t in one["trials"]}) > 1
    assert tune_baseline("hpa", quick, backend=Backend("local", workers=2), **kw) == one
    assert tune_baseline("hpa", quick, backend=Backend("ray", workers=2), **kw) == one


def test_bad_backend_settings_name_the_problem():
    with pytest.raises(ValueError, match="backend must be one of"):
        Backend("dask")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        Backend("local", workers=0)
    with pytest.raises(ValueError, match="needs --backend ray"):
        Backend("local", address="ray://head:10001")


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(BackendError, match=r"pip install 'rlscale\[ray\]'"):
        ray_init(Backend("ray"))


def test_cli_evaluate_backend_errors_exit_2(capsys, monkeypatch):
    from rlscale.cli import main

    argv = ["evaluate", "--scenario", "azure-conv", "--no-mlflow", "--address", "x:1"]
    assert main(argv) == 2
    assert "needs --backend ray" in capsys.readouterr().err
