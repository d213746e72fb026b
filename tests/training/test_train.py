"""``rlscale train`` end to end: a real MLflow SQLite store, a real PPO, the real export.

A quick scenario (half a day of synthetic load, half-hour episodes) keeps each run to seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("stable_baselines3")
pytest.importorskip("mlflow")
pytest.importorskip("onnxruntime")

from rlscale.cli import main
from rlscale.envs.scenario import ScenarioError, scenario_from_dict
from rlscale.envs.simulator import ClusterSimulator
from rlscale.training.config import TrainConfig, config_from_args
from rlscale.training.lagrange import LagrangeMultiplier, episode_window

RANDOMIZED = {
    "randomization": {
        "rate_scale": [0.8, 1.25],
        "workloads": [
            {
                "share": 0.25,
                "workload": {"kind": "synthetic", "synthetic": {"base_rate_rps": 2.0, "days": 0.5}},
            }
        ],
    }
}
"""The quick scenario (tests/conftest.py) with a rate range, so that training randomizes, and
a quieter workload mixed into a quarter of the training clusters."""
# 4 envs x 64 steps = 256 env steps per PPO update
SMALL = [
    "--n-envs", "4", "--n-steps", "64", "--batch-size", "128", "--n-epochs", "1",
    "--net-arch", "16", "16", "--eval-windows", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture
def store(tmp_path, monkeypatch, quick_raw):
    """A scenario file, a fresh SQLite tracking store, and the run folders, all in tmp_path."""
    scenario = tmp_path / "quick-train.yaml"
    scenario.write_text(yaml.safe_dump(quick_raw("quick-train", **RANDOMIZED)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return {"scenario": str(scenario), "uri": uri, "out": str(tmp_path / "runs")}


def _args(store, *extra):
    return ["train", "--scenario", store["scenario"], "--out-dir", store["out"], *SMALL, *extra]


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_train_cli_logs_registers_challenger_and_the_export_evaluates(store, capsys):
    from mlflow import MlflowClient

    from rlscale.agents.onnx_policy import load_onnx_policy

    rc = main(_args(store, "--total-timesteps", "1024", "--eval-every", "512", "--seed", "3"))
    assert rc == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["status"] == "FINISHED" and summary["timesteps"] == 1024
    client = MlflowClient(tracking_uri=store["uri"])
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    # the whole config is recorded, as params and as config.json
    assert set(TrainConfig().to_dict()) <= set(run.data.params)
    assert run.data.params["seed"] == "3"
    # SB3's own metrics, the evaluation's namespaced ones, the multiplier and speed
    for key in (
        "train/approx_kl",
        "train/value_loss",
        "rollout/attainment",
        "lagrange/price_usd",
        "time/env_steps_per_s",
        "eval/cost_usd",
        "eval/slo_attainment",
        "rollout/randomization/rate_scale",  # training draws each episode's rate (randomize)
    ):
        assert key in run.data.metrics, key
    drawn = client.get_metric_history(run.info.run_id, "rollout/randomization/rate_scale")
    assert all(0.8 <= m.value <= 1.25 for m in drawn)
    assert len({round(m.value, 6) for m in drawn}) > 1
    evals = client.get_metric_history(run.info.run_id, "eval/cost_usd")
    assert sorted(m.step for m in evals) == [512, 1024]
    assert all(m.value > 0 for m in evals)
    prices = client.get_metric_history(run.info.run_id, "lagrange/price_usd")
    assert len(prices) == 4  # one dual step per rollout
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "training_report.json", "learning_curves.png"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "scenario")] == [
        "scenario/quick-train.yaml"
    ]
    ckpt = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints/latest")}
    assert "checkpoints/latest/model.zip" in ckpt and "checkpoints/latest/state.json" in ckpt
    # registered as a new version with the alias challenger, from this run
    mv = client.get_model_version_by_alias("rlscale-policy", "challenger")
    assert int(mv.version) == summary["model_version"] and mv.run_id == run.info.run_id
    # the registered artifact reloads through onnxruntime and evaluates beside a baseline
    local = client.download_artifacts(run.info.run_id, "policy", str(Path(store["out"]) / "dl"))
    policy = load_onnx_policy(local)
    assert policy.manifest.training["run_id"] == run.info.run_id
    assert policy.manifest.training["timesteps"] == 1024
    # trained on a mix of workloads (recorded), described by the scenario's own (its rate units)
    own = ClusterSimulator(scenario_from_dict(yaml.safe_load(Path(store["scenario"]).read_text())))
    assert policy.manifest.observation.reference_rps == pytest.approx(own.reference_rps)
    mixed = policy.manifest.training["mixed_workloads"]
    assert [m["clusters"] for m in mixed] == [3, 1]  # 4 envs, a quarter on the other workload
    assert mixed[0]["workload"] == own.workload.name != mixed[1]["workload"]
    # validation ran on both workloads of the mix, each on its own windows
    report = json.loads((Path(store["out"]) / run.info.run_id / "training_report.json").read_text())
    by_workload = report["validation_windows_by_workload"]
    assert set(by_workload) == {m["workload"] for m in mixed}
    assert by_workload[own.workload.name] == report["validation_windows"]
    last = report["validations"][-1]["episodes"]
    assert {e["workload"] for e in last} == set(by_workload)
    # the export is the cheapest validation that met the target (model selection on
    # validation windows, never held-out ones)
    att = {
        m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval/slo_attainment")
    }
    ok = {m.step: m.value for m in evals if att[m.step] >= 0.99}
    assert ok, "the quick scenario's validations should meet the target"
    assert policy.manifest.training["selected"] == "best"
    assert policy.manifest.training["selected_timesteps"] == min(ok, key=ok.get)
    rc = main(
        [
            "evaluate", "--scenario", store["scenario"], "--policy", f"onnx={local}",
            "--policy", "static", "--seeds", "1", "--max-windows", "1", "--no-oracle",
            "--no-mlflow", "--no-progress", "--out", str(Path(store["out"]) / "eval"),
        ]
    )  # fmt: skip
    assert rc == 0
    results = json.loads((Path(store["out"]) / "eval" / "results.json").read_text())
    labels = {p["label"] if isinstance(p, dict) else p for p in results["policies"]}
    assert any(str(label).startswith("onnx[") for label in labels)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_resumes_to_the_planned_timesteps_in_one_run(store, capsys, signum):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM mid-training saves a checkpoint; --resume
    finishes the same run."""
    from mlflow import MlflowClient

    # long enough that the signal always lands mid-run (4096 steps took 3 s on a quiet machine
    # and could finish first), with a checkpoint every 1024 steps
    total = 16384
    cmd = [sys.executable, "-m", "rlscale.cli", *_args(store, "--total-timesteps", str(total))]
    cmd += ["--checkpoint-every", "1024", "--eval-every", "0", "--no-register"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    # a shell's background job (CI, nohup) starts with SIGINT ignored, which a child inherits:
    # give the child the default disposition, as a terminal would
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 240
        runs = Path(store["out"])
        while time.monotonic() < deadline:
            try:  # a checkpoint folder is swapped whole: it may vanish between glob and read
                steps = [
                    json.loads(p.read_text())["timesteps"]
                    for p in runs.glob("*/checkpoint/state.json")
                ]
            except (FileNotFoundError, json.JSONDecodeError):
                steps = []
            if steps and steps[0] >= 1024:
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within 240 s")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "--resume" in err
    interrupted = _last_json(out)
    run_id = interrupted["run_id"]
    assert interrupted["status"] == "KILLED" and 0 < interrupted["timesteps"] < total
    client = MlflowClient(tracking_uri=store["uri"])
    assert client.get_run(run_id).info.status == "KILLED"

    assert main(["train", "--resume", run_id]) == 0
    done = _last_json(capsys.readouterr().out)
    assert done["run_id"] == run_id and done["timesteps"] == total
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert len(client.search_runs([experiment.experiment_id])) == 1
    steps = [m.step for m in client.get_metric_history(run_id, "lagrange/price_usd")]
    assert max(steps) == total
    state = json.loads((Path(store["out"]) / run_id / "checkpoint" / "state.json").read_text())
    assert state["timesteps"] == total


def test_resume_refuses_changed_settings_and_unknown_runs(store, capsys):
    assert main(_args(store, "--total-timesteps", "256", "--eval-every", "0", "--no-register")) == 0
    run_id = _last_json(capsys.readouterr().out)["run_id"]
    assert main(["train", "--resume", run_id, "--learning-rate", "0.1"]) == 2
    assert "learning_rate=0.0003->0.1" in capsys.readouterr().err
    assert main(["train", "--resume", "0123456789abcdef0123456789abcdef"]) == 2
    assert "no such training run" in capsys.readouterr().err


def test_too_few_envs_for_the_workloads_mixed_is_refused_before_a_run_exists(store, capsys):
    from mlflow import MlflowClient

    args = _args(store, "--n-envs", "1", "--batch-size", "64", "--total-timesteps", "256")
    assert main(args) == 2
    assert "need at least 2 clusters, got 1" in capsys.readouterr().err
    client = MlflowClient(tracking_uri=store["uri"])
    experiments = client.search_experiments()
    assert not [r for e in experiments for r in client.search_runs([e.experiment_id])]


def test_config_file_then_flags_and_clear_errors(tmp_path):
    import argparse

    from rlscale.training.train import add_train_parser

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text("n_envs: 8\nn-steps: 32\nbatch_size: 64\ngamma: 0.9\n")
    args = parser.parse_args(["train", "--config", str(cfg_file), "--gamma", "0.95"])
    config = config_from_args(args)
    assert (config.n_envs, config.n_steps, config.batch_size) == (8, 32, 64)
    assert config.gamma == 0.95  # the flag wins over the file
    assert config.learning_rate == TrainConfig().learning_rate  # the default stays
    cfg_file.write_text("n_env: 8\n")
    with pytest.raises(ScenarioError, match=r"unknown train settings \['n_env'\]"):
        config_from_args(parser.parse_args(["train", "--config", str(cfg_file)]))
    with pytest.raises(ScenarioError, match="lagrange_window=-1 must be >= 0"):
        TrainConfig(lagrange_window=-1)
    with pytest.raises(ScenarioError, match="batch_size=4096 is larger than a rollout"):
        TrainConfig(n_envs=2, n_steps=16, batch_size=4096)


def test_lagrange_price_rises_below_target_and_falls_above():
    lag = LagrangeMultiplier(price_usd=0.01, base_target=0.99, lr=0.5)
    # 2% missed against 1% allowed: the price goes up by e**0.5
    assert lag.update(good=98.0, demand=100.0) == pytest.approx(0.01 * np.exp(0.5))
    # all requests within SLO: down by e**0.5 (the step is clipped to one unit)
    assert lag.update(good=100.0, demand=100.0) == pytest.approx(0.01)
    # exactly at target: unchanged
    assert lag.update(good=99.0, demand=100.0) == pytest.approx(0.01)
    # a far miss is clipped to one step, not e**(0.5 * 49)
    assert lag.update(good=50.0, demand=100.0) == pytest.approx(0.01 * np.exp(0.5))
    # nothing served: no information, no step
    assert lag.update(good=0.0, demand=0.0) == pytest.approx(0.01 * np.exp(0.5))
    capped = LagrangeMultiplier(price_usd=5.0, base_target=0.99, lr=5.0, max_usd=10.0)
    assert capped.update(good=0.0, demand=10.0) == 10.0
    with pytest.raises(ValueError, match="target"):
        LagrangeMultiplier(price_usd=1.0, base_target=1.0)


def test_the_dual_step_pools_the_last_window_rollouts():
    lag = LagrangeMultiplier(price_usd=0.01, base_target=0.99, lr=0.5, window=2)
    # one rollout, 2% missed against 1% allowed: up by e**0.5
    assert lag.update(good=98.0, demand=100.0) == pytest.approx(0.01 * np.exp(0.5))
    # a clean rollout pooled with it: 2 of 200 missed, exactly the target: unchanged
    assert lag.update(good=100.0, demand=100.0) == pytest.approx(0.01 * np.exp(0.5))
    # another clean one: the missing rollout has left the window, none missed: down by e**0.5
    assert lag.update(good=100.0, demand=100.0) == pytest.approx(0.01)
    # a rollout without requests neither steps nor enters the window
    assert lag.update(good=0.0, demand=0.0) == pytest.approx(0.01)
    # the window survives a checkpoint: a restored multiplier steps as the original does
    restored = LagrangeMultiplier(price_usd=1.0, base_target=0.99, lr=0.5, window=2)
    restored.load(lag.state())
    assert restored.update(good=97.0, demand=100.0) == lag.update(good=97.0, demand=100.0)
    assert restored.price_usd == pytest.approx(0.01 * np.exp(0.5 * 0.5))  # 1.5% against 1%
    with pytest.raises(ValueError, match="window 0 must be >= 1"):
        LagrangeMultiplier(price_usd=1.0, base_target=0.99, window=0)


@pytest.mark.parametrize(
    ("episode_steps", "n_steps", "window"),
    [(58, 256, 1), (256, 256, 1), (2880, 256, 12), (20160, 256, 16)],
    ids=["azure-half-hour", "one-rollout", "day", "week-capped"],
)
def test_the_default_window_spans_one_training_episode(episode_steps, n_steps, window):
    assert episode_window(episode_steps, n_steps) == window


def test_served_policy_below_target_raises_the_rollout_target():
    lag = LagrangeMultiplier(price_usd=0.01, base_target=0.99)
    # served at 98.8%: 0.2 points short, so the rollouts must now reach 99.2%
    assert lag.observe_served(0.988) == pytest.approx(0.992)
    # served at 99.1%: 0.1 points of slack given back
    assert lag.observe_served(0.991) == pytest.approx(0.991)
    # far below: one step moves at most half the allowed miss (0.5 points)...
    assert lag.observe_served(0.90) == pytest.approx(0.996)
    # ... and the offset stops at three quarters of it
    assert lag.observe_served(0.90) == pytest.approx(0.9975)
    # far above target: back down by half the allowance per step, never below the base
    assert lag.observe_served(1.0) == pytest.approx(0.9925)
    assert lag.observe_served(1.0) == pytest.approx(0.99)
    assert lag.offset == 0.0
    lag.observe_served(0.985)
    fresh = LagrangeMultiplier(price_usd=1.0, base_target=0.99)
    fresh.load(lag.state())
    assert fresh.target == lag.target and fresh.price_usd == lag.price_usd


def test_the_violation_price_is_what_the_reward_charges(quick_raw):
    sc = quick_raw("quick-train")
    sc["pools"][0]["initial_replicas"] = 0  # nothing serves: every request is a violation

    rewards = []
    for price in (0.0, 0.05):
        sim = ClusterSimulator(scenario_from_dict(sc), 1)
        sim.set_violation_price(price)
        sim.reset_cluster(0, np.random.default_rng(0), start_step=0)
        total_viol = total_cost = total_reward = 0.0
        for _ in range(20):
            sim.step(sim.noop_action()[None, :])
            good, demand = sim.step_requests()
            total_viol += float(demand[0] - good[0])
            total_cost += sim.step_info(0)["cost/usd"]
            total_reward += float(sim.rewards[0])
        rewards.append((total_reward, total_cost, total_viol))
    (r0, c0, v0), (r1, c1, v1) = rewards
    assert v0 == v1 > 0 and c0 == c1
    scale = scenario_from_dict(sc).reward.scale
    assert r0 - r1 == pytest.approx(0.05 * v1 / scale, rel=1e-6)
    with pytest.raises(ValueError, match="violation price"):
        sim.set_violation_price(float("nan"))


def test_hold_prior_starts_the_policy_holding(quick_raw):
    from stable_baselines3 import PPO

    from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv
    from rlscale.training.train import hold_prior

    venv = InferenceClusterVecEnv(2, scenario=scenario_from_dict(quick_raw("quick-train")))
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, device="cpu", seed=0)
    noop = venv.sim.noop_action()
    hold_prior(model, noop, 0.8)
    obs = venv.reset()
    dist = model.policy.get_distribution(model.policy.obs_to_tensor(obs)[0])
    for head, (n, hold) in enumerate(zip(venv.action_space.nvec, noop, strict=True)):
        probs = dist.distribution[head].probs.detach().numpy()
        # the no-op takes p (up to the near-zero initial weights), the rest share 1 - p
        assert probs[:, hold] == pytest.approx(0.8 if n > 1 else 1.0, abs=0.02)
    action, _ = model.predict(obs, deterministic=True)
    assert (action == noop).all()
