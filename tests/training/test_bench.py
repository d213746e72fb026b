"""``rlscale bench train``: the real command on a small PPO, in a fresh process per setting."""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("stable_baselines3")

from rlscale.cli import main
from rlscale.training.bench import POLICIES, bench_train

SMALL = {"n_envs": 4, "n_steps": 64, "batch_size": 128, "n_epochs": 1, "net_arch": [16, 16]}


@pytest.mark.parametrize("policy", POLICIES)
def test_bench_train_prints_rates_in_wall_and_cpu_time(policy, quick_raw, tmp_path, capsys):
    scenario = tmp_path / "quick-bench.yaml"
    scenario.write_text(yaml.safe_dump(quick_raw("quick-bench")))
    settings = tmp_path / "small.yaml"
    settings.write_text(yaml.safe_dump(SMALL))
    argv = ["bench", "train", "--scenario", str(scenario), "--config", str(settings)]
    argv += ["--threads", "one", "--rollouts", "1", "--policy", policy]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ppo"]["policy"] == policy and result["ppo"]["n_envs"] == 4
    one = result["threads_one"]
    assert one["policy"] == policy and one["torch_threads"] == one["numba_threads"] == 1
    assert one["action_heads"] == 4  # two pools: two replica heads, two one-choice warm pools
    for rate in ("steps_per_s", "steps_per_cpu_s"):
        sim, cart = one[f"scenario_{rate}"], one[f"cartpole_{rate}"]
        assert sim > 0 and cart > 0
    assert one["ratio"] == pytest.approx(
        one["scenario_steps_per_s"] / one["cartpole_steps_per_s"], abs=2e-3
    )
    assert one["cpu_ratio"] == pytest.approx(
        one["scenario_steps_per_cpu_s"] / one["cartpole_steps_per_cpu_s"], abs=2e-3
    )
    for share in ("scenario_env_share", "cartpole_env_cpu_share", "scenario_env_cpu_share"):
        assert 0 < one[share] < 1, share
    assert result["best_cpu_ratio"] == one["cpu_ratio"]
    assert result["meets_target"] == (result["best_ratio"] >= result["target_ratio"])


def test_bench_train_refuses_an_unknown_policy():
    with pytest.raises(ValueError, match="policy='mlp'"):
        bench_train(policy="mlp")
