"""The rlscale command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.needs_data


def _rlscale(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlscale.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_simulate_writes_summary_timeline_and_plot(tmp_path):
    out = tmp_path / "sim"
    proc = _rlscale(
        "simulate",
        "--scenario",
        "azure-conv",
        "--hours",
        "0.25",
        "--replicas",
        "h100=1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    totals = json.loads(proc.stdout.strip().splitlines()[-1])
    assert totals["scenario"] == "azure-conv" and totals["replicas"]["h100"] == 1
    assert totals["cost_usd"] == pytest.approx(4.0 * 0.25)
    assert 0 < totals["slo_attainment"] <= 1
    saved = json.loads((out / "summary.json").read_text())
    assert saved == totals
    lines = (out / "timeline.csv").read_text().splitlines()
    assert len(lines) == 1 + 30  # header + 0.25 h of 30 s steps
    png = (out / "simulate.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_bad_replicas_argument_exits_2_with_the_reason(tmp_path):
    proc = _rlscale(
        "simulate", "--scenario", "azure-conv", "--replicas", "h200=3", "--out", str(tmp_path)
    )
    assert proc.returncode == 2
    assert "unknown pool 'h200'" in proc.stderr
    proc = _rlscale(
        "simulate", "--scenario", "azure-conv", "--replicas", "h100=many", "--out", str(tmp_path)
    )
    assert proc.returncode == 2 and "POOL=N" in proc.stderr


def test_scenarios_lists_the_shipped_scenarios():
    proc = _rlscale("scenarios")
    assert proc.returncode == 0
    assert "azure-conv" in proc.stdout and "synthetic-2week" in proc.stdout


def test_bench_env_prints_one_json_object_last():
    proc = _rlscale(
        "bench",
        "env",
        "--scenario",
        "azure-conv",
        "--episode-scenario",
        "azure-code",
        "--sizes",
        "1,8",
        "--sync-sizes",
        "8",
        "--seconds",
        "0.05",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["scenario"] == "azure-conv"
    assert result["episode_scenario"] == "azure-code" and result["episode_steps"] == 114
    assert result["single_env_steps_per_s"] > 0
    assert set(result["batched_env_steps_per_s"]) == {"1", "8"}
    # what training steps, at the largest size: azure-conv mixes in a synthetic service
    assert set(result["training_env_steps_per_s"]) == {"8"}
    assert result["training_env_steps_per_s"]["8"] > 0 and result["training_workloads"] == 2
    assert result["speedup_vs_sync_vector_env"]["8"] > 0


def test_calibrate_refits_and_writes_profiles(tmp_path):
    proc = _rlscale("calibrate", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["all_pass"] is True
    assert (tmp_path / "h100x1-llama3-8b.yaml").exists()
    assert (tmp_path / "calibration.png").exists()


def test_tune_baseline_saves_params_that_evaluate_reads(tmp_path):
    pytest.importorskip("mlflow")
    out = tmp_path / "tuned"
    env_db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlscale.cli",
            "tune-baseline",
            "--scenario",
            "azure-conv",
            "--policy",
            "static",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": env_db},
    )
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((out / "static.json").read_text())
    assert saved["meets_slo"] is True and saved["params"]["replicas"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env_db)
    exp = client.get_experiment_by_name("rlscale-tune")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["slo_attainment"] >= 0.99
    assert runs[0].data.params["policy"] == "static"


def test_tune_baseline_refuses_an_unknown_baseline(tmp_path):
    proc = _rlscale(
        "tune-baseline", "--scenario", "azure-conv", "--policy", "hpaa", "--no-mlflow", cwd=tmp_path
    )
    assert proc.returncode == 2 and "cannot tune ['hpaa']" in proc.stderr


def test_register_policy_registers_a_verified_export_and_refuses_a_corrupt_one(
    exported_policy, tmp_path
):
    pytest.importorskip("mlflow")
    import shutil

    from mlflow import MlflowClient

    folder = exported_policy(0)
    done = _rlscale("register-policy", str(folder), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["version"] == 1
    assert out["serve_with"] == "models:/rlscale-policy@champion"
    assert out["tracking_uri"] == "sqlite:///mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    mv = client.get_model_version_by_alias("rlscale-policy", "champion")
    assert int(mv.version) == 1 and mv.tags["policy_version"] == out["policy_version"]
    # the registry's artifacts live beside the database, not in ./mlruns
    assert not (tmp_path / "mlruns").exists()

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "model.onnx").write_bytes(b"garbage")
    refused = _rlscale("register-policy", str(bad), cwd=tmp_path)
    assert refused.returncode == 2
    assert "checksum mismatch" in refused.stderr
    assert int(client.get_model_version_by_alias("rlscale-policy", "champion").version) == 1


def test_export_policy_writes_what_serve_loads(exported_policy, tmp_path):
    pytest.importorskip("stable_baselines3")
    from rlscale.agents.onnx_policy import load_onnx_policy

    _, model, norm, venv = exported_policy(0, with_model=True)
    model.save(tmp_path / "ppo.zip")
    norm.save(str(tmp_path / "vecnormalize.pkl"))
    out = tmp_path / "policy"
    done = _rlscale(
        "export-policy",
        "--model",
        str(tmp_path / "ppo.zip"),
        "--vecnormalize",
        str(tmp_path / "vecnormalize.pkl"),
        "--scenario",
        "azure-conv",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    policy = load_onnx_policy(out)
    assert line["policy_version"] == policy.version
    obs = np.clip(
        np.random.default_rng(3).uniform(0, 2, (100, venv.sim.obs_low.size)),
        venv.sim.obs_low,
        venv.sim.obs_high,
    ).astype(np.float32)
    expected, _ = model.predict(norm.normalize_obs(obs), deterministic=True)
    np.testing.assert_array_equal(policy.act(obs), expected)

    def refused(*args: str) -> str:
        done = _rlscale("export-policy", "--model", str(tmp_path / "ppo.zip"), *args)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        return done.stderr

    out_x = ["--out", str(tmp_path / "x")]
    # a model of other spaces
    assert "cannot load the saved model" in refused(
        "--no-vecnormalize", "--scenario", "servegen-m-small", *out_x
    )
    # statistics that are not statistics
    assert "cannot load the saved statistics" in refused(
        "--vecnormalize", str(tmp_path / "ppo.zip"), "--scenario", "azure-conv", *out_x
    )
    # whether it was normalized must be said: a saved model cannot tell
    assert "--no-vecnormalize" in refused("--scenario", "azure-conv", *out_x)
    assert not (tmp_path / "x").exists()
