"""``rlscale sweep``: the pieces that decide (the objective, the search space, the trial
selection, a stopped trial's run) and the error exits.

The end-to-end sweep (two trials of a few hundred env steps, MLflow parent and child runs in a
real SQLite store, the best trial registered as challenger) runs on the one Ray cluster of
``tests/common/test_backends.py``, beside the evaluation grid on it.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("stable_baselines3")
pytest.importorskip("mlflow")
pytest.importorskip("onnxruntime")

from rlscale.cli import main
from rlscale.envs.scenario import scenario_from_dict
from rlscale.training.config import TrainConfig
from rlscale.training.sweep import (
    OUTCOME_TAG,
    SEARCH_SPACE,
    TrialSelection,
    _close_trial_run,
    _trial_config,
    ceiling_usd,
    objective_usd,
    searched_fields,
)
from rlscale.training.validate import ValidationResult


@pytest.fixture
def store(tmp_path, monkeypatch, quick_raw):
    scenario = tmp_path / "quick-sweep.yaml"
    scenario.write_text(yaml.safe_dump(quick_raw("quick-sweep")))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return {"scenario": str(scenario), "uri": uri, "out": tmp_path / "sweep"}


def _validation(cost: float, attainment: float, target: float = 0.99) -> ValidationResult:
    return ValidationResult(
        timesteps=0,
        cost_usd=cost,
        cost_usd_per_h=cost,
        slo_attainment=attainment,
        min_attainment=attainment,
        meets_target=float(attainment >= target),
        target=target,
    )


def test_objective_is_the_cost_at_the_target_else_above_any_cost_that_meets_it(quick_raw):
    scenario = scenario_from_dict(quick_raw(), "quick")
    ceiling = ceiling_usd(scenario)
    # the quick scenario: 6 h100 at $4/h and 4 a100 at $2.5/h for half an hour
    assert ceiling == pytest.approx((6 * 4.0 + 4 * 2.5) * 0.5)
    assert objective_usd(_validation(3.0, 0.995), ceiling) == 3.0
    near, far = (
        objective_usd(_validation(1.0, 0.985), ceiling),
        objective_usd(_validation(1.0, 0.90), ceiling),
    )
    assert ceiling < near < far  # any miss ranks after any pass, a nearer miss before a farther
    assert near == pytest.approx(1.0 + ceiling * (1 + 0.5))


def test_trial_selection_follows_the_policy_the_trial_would_export():
    best = TrialSelection("best")
    first = _validation(2.0, 0.5)
    assert best.update(first) is first  # nothing met the target yet: the last one
    met = _validation(5.0, 0.999)
    assert best.update(met) is met
    assert best.update(_validation(1.0, 0.5)) is met  # the export stays the one that met
    cheaper = _validation(4.0, 0.999)
    assert best.update(cheaper) is cheaper
    last = TrialSelection("last")
    last.update(met)
    missed = _validation(1.0, 0.5)
    assert last.update(missed) is missed


def test_search_space_draws_valid_training_configs():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(SEARCH_SPACE) <= fields
    base = TrainConfig().to_dict()
    for name, (kind, args) in SEARCH_SPACE.items():
        assert kind in ("uniform", "loguniform", "choice"), name
        values = args if kind == "choice" else args[:2]
        for value in values:
            assert getattr(_trial_config({name: value}, base), name) == value or (
                name == "batch_size"
            )
    # a minibatch larger than the rollout is cut to it
    cut = _trial_config({"n_steps": 64, "batch_size": 4096}, {**base, "n_envs": 4})
    assert cut.batch_size == 256
    assert searched_fields({"learning_rate"}) == [n for n in SEARCH_SPACE if n != "learning_rate"]


def test_a_stopped_trials_run_ends_killed(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    running = client.create_run(exp).info.run_id  # a worker ended while it trained
    failed = client.create_run(exp).info.run_id  # or the stop raised in its training thread
    client.set_terminated(failed, status="FAILED")
    done = client.create_run(exp).info.run_id
    client.set_terminated(done)
    for run_id in (running, failed):
        _close_trial_run(client, {"mlflow_run_id": run_id, "outcome": "stopped"})
        assert client.get_run(run_id).info.status == "KILLED"
        assert client.get_run(run_id).data.tags[OUTCOME_TAG] == "stopped"
    _close_trial_run(client, {"mlflow_run_id": done, "outcome": "finished"})
    assert client.get_run(done).info.status == "FINISHED"
    assert client.get_run(done).data.tags[OUTCOME_TAG] == "finished"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenario", "no-such-scenario", "--trials", "2"], "no scenario 'no-such-scenario'"),
        (["--trials", "0"], "--trials 0: a sweep needs at least one trial"),
        (["--trials", "2", "--grace-steps", "0"], "--grace-steps 0 must be at least 1"),
        (["--trials", "2", "--address", "ray://head:10001"], "needs --backend ray"),
        (
            ["--trials", "2"]
            + [f"--{n.replace('_', '-')}={args[0]}" for n, (_, args) in SEARCH_SPACE.items()],
            "is fixed by a flag",
        ),
    ],
)
def test_bad_sweeps_exit_2_with_the_reason(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # nothing started


def test_missing_ray_says_how_to_install(store, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    assert main(["sweep", "--scenario", store["scenario"], "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "needs Ray Tune and Optuna" in err and "pip install 'rlscale[ray]'" in err


def test_raycluster_manifest_matches_its_image_and_what_workers_need():
    """deploy/kubernetes/raycluster.yaml: one Ray version for the cluster, its image and the
    Dockerfile; every pod with the worker thread settings, a shared tracking server and the
    datasets where $RLSCALE_DATA says; the head runs the driver, not trials."""
    from rlscale.common.backends import WORKER_ENV
    from rlscale.common.tracking import TRACKING_URI_ENV
    from rlscale.envs.scenario import DATA_ENV_VAR

    deploy = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
    cluster = yaml.safe_load((deploy / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    version = spec["rayVersion"]
    dockerfile = (deploy / "rlscale-ray.Dockerfile").read_text()
    assert f"FROM rayproject/ray:{version}-" in dockerfile
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        pod = group["template"]["spec"]
        for container in pod["containers"]:
            assert container["image"].endswith(f":{version}")
            env = {e["name"]: e["value"] for e in container["env"]}
            assert {k: env[k] for k in WORKER_ENV} == WORKER_ENV
            assert env[TRACKING_URI_ENV].startswith("http")  # never a pod's own SQLite file
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert env[DATA_ENV_VAR] in mounts
    worker = spec["workerGroupSpecs"][0]
    assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
