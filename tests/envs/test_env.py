"""The Gymnasium env and the batched envs: API conformance, determinism, batching."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import rlscale.envs
from rlscale.envs import list_scenarios
from rlscale.envs.env import InferenceClusterEnv
from rlscale.envs.vector import InferenceClusterVectorEnv

pytestmark = pytest.mark.needs_data

SHIPPED = list_scenarios()


def test_every_scenario_ships():
    assert {
        "azure-conv",
        "azure-code",
        "mooncake-conv",
        "servegen-m-large",
        "synthetic-2week",
    } <= set(SHIPPED)


@pytest.mark.parametrize("scenario", SHIPPED)
def test_gymnasium_env_checker_passes(scenario):
    env = gym.make(rlscale.envs.ENV_ID, scenario=scenario)
    gym_check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("scenario", SHIPPED)
def test_sb3_env_checker_passes(scenario):
    sb3_env_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    sb3_env_checker.check_env(InferenceClusterEnv(scenario=scenario), warn=True)


def test_make_by_module_path_registers_on_the_fly():
    env = gym.make("rlscale.envs:rlscale/InferenceCluster-v0", scenario="azure-conv")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def _rollout(env: InferenceClusterEnv, seed: int, steps: int, action_seed: int):
    env.action_space.seed(action_seed)
    obs, _ = env.reset(seed=seed)
    trace = [obs]
    rewards = []
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        trace.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            obs, _ = env.reset()
            trace.append(obs)
    return np.array(trace), np.array(rewards)


def test_same_seed_same_trajectory(make_small_scenario):
    sc = make_small_scenario()
    a = _rollout(InferenceClusterEnv(scenario=sc), seed=3, steps=80, action_seed=1)
    b = _rollout(InferenceClusterEnv(scenario=sc), seed=3, steps=80, action_seed=1)
    c = _rollout(InferenceClusterEnv(scenario=sc), seed=4, steps=80, action_seed=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_batched_equals_single_envs_with_those_seeds(make_small_scenario):
    # episodes of 12 steps, so the 40 steps below cross three automatic resets
    sc = make_small_scenario(episode_hours=0.1)
    n, steps, seed = 8, 40, 100
    vec = InferenceClusterVectorEnv(n, scenario=sc)
    actions = np.stack(
        [np.stack([vec.single_action_space.sample() for _ in range(n)]) for _ in range(steps)]
    )
    obs_v, _ = vec.reset(seed=seed)
    vec_obs, vec_rew, vec_trunc = [obs_v], [], []
    for t in range(steps):
        obs_v, rew, term, trunc, _ = vec.step(actions[t])
        assert not term.any()
        vec_obs.append(obs_v)
        vec_rew.append(rew)
        vec_trunc.append(trunc)

    for i in range(n):
        env = InferenceClusterEnv(scenario=sc)
        obs, _ = env.reset(seed=seed + i)
        assert np.array_equal(obs, vec_obs[0][i])
        needs_reset = False
        for t in range(steps):
            if needs_reset:  # next-step autoreset: this step resets instead of acting
                obs, _ = env.reset()
                reward, truncated = 0.0, False
            else:
                obs, reward, _, truncated, _ = env.step(actions[t][i])
            needs_reset = truncated
            assert np.array_equal(obs, vec_obs[t + 1][i]), f"env {i} differs at step {t}"
            assert reward == vec_rew[t][i]
            assert truncated == vec_trunc[t][i]


def test_episode_latency_stats_change_nothing_but_episode_latency(make_small_scenario):
    # the batched envs keep no episode latency histograms unless asked: the same observations,
    # rewards, infos and step metrics to the last bit, and episode_latency says why it is out
    sc = make_small_scenario()
    n, steps = 6, 30
    kept = InferenceClusterVectorEnv(n, scenario=sc, episode_latency_stats=True)
    lean = InferenceClusterVectorEnv(n, scenario=sc)
    kept.action_space.seed(7)
    actions = [kept.action_space.sample() for _ in range(steps)]
    assert np.array_equal(kept.reset(seed=11)[0], lean.reset(seed=11)[0])
    for a in actions:
        out_k, out_l = kept.step(a), lean.step(a)
        for x, y in zip(out_k[:4], out_l[:4], strict=True):
            assert np.array_equal(x, y)
        assert out_k[4].keys() == out_l[4].keys()
        for key in out_k[4]:
            assert np.array_equal(out_k[4][key], out_l[4][key])
        assert np.array_equal(kept.sim.metrics, lean.sim.metrics)
        assert np.array_equal(kept.sim.pool_metrics, lean.sim.pool_metrics)
    lat = kept.sim.episode_latency(0)
    assert lat["ttft_p95_s"] > 0.0 and lat["tpot_p95_s"] > 0.0
    with pytest.raises(RuntimeError, match="episode_latency_stats=True"):
        lean.sim.episode_latency(0)


def test_make_vec_uses_the_batched_simulator():
    vec = gym.make_vec(
        rlscale.envs.ENV_ID,
        num_envs=4,
        vectorization_mode="vector_entry_point",
        scenario="azure-conv",
    )
    assert isinstance(vec, InferenceClusterVectorEnv)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (4, vec.single_observation_space.shape[0])
    obs, rew, _, _, info = vec.step(vec.action_space.sample())
    assert vec.observation_space.contains(obs)
    assert (rew < 0).all() and info["cost/usd"].shape == (4,)


def test_sb3_vec_env_steps_resets_and_reports_episodes(make_small_scenario):
    pytest.importorskip("stable_baselines3")
    from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv

    sc = make_small_scenario(episode_hours=0.05)  # 6 steps
    venv = InferenceClusterVecEnv(3, scenario=sc)
    venv.seed(5)
    obs = venv.reset()
    assert obs.shape == (3, venv.observation_space.shape[0])
    noop = np.tile(venv.sim.noop_action(), (3, 1))
    ended = []
    for _ in range(6):
        obs, _, dones, infos = venv.step(noop)
        ended += [info for info in infos if "episode" in info]
    assert dones.all() and len(ended) == 3
    for info in ended:
        assert info["episode"]["l"] == 6
        assert venv.observation_space.contains(info["terminal_observation"])
        assert info["cost/by_tenant_usd"]["default"] == pytest.approx(info["cost/total_usd"])
    # the envs were reset in the same step: a fresh episode has taken no step yet
    assert (venv.sim.steps == 0).all()


def test_step_before_reset_is_refused(make_small_scenario):
    env = InferenceClusterEnv(scenario=make_small_scenario())
    with pytest.raises(AssertionError, match="Call reset before using step"):
        env.step(env.noop_action())


def test_action_outside_space_is_refused(make_small_scenario):
    env = InferenceClusterEnv(scenario=make_small_scenario())
    env.reset(seed=0)
    bad = env.noop_action()
    bad[0] = 99
    top = int(env.action_space.nvec[0]) - 1
    with pytest.raises(ValueError, match=rf"action entry \(0, 0\) = 99 is outside \[0, {top}\]"):
        env.step(bad)
    bad[0] = -1
    with pytest.raises(ValueError, match="is outside"):
        env.step(bad)
    with pytest.raises(ValueError, match=r"action of shape \(3,\) is not in MultiDiscrete"):
        env.step(env.noop_action()[:3])
    env.step(env.noop_action())  # nothing was applied: the env still steps


def test_unknown_reset_option_is_named(make_small_scenario):
    env = InferenceClusterEnv(scenario=make_small_scenario())
    with pytest.raises(ValueError, match="unknown reset options \\['start'\\]"):
        env.reset(seed=0, options={"start": 3})


def test_start_step_pins_the_window(make_small_scenario):
    env = InferenceClusterEnv(scenario=make_small_scenario(episode_hours=0.1))
    _, info = env.reset(seed=0, options={"start_step": 5})
    assert info["start_step"] == 5
    with pytest.raises(ValueError, match="start_step 100000 outside"):
        env.reset(seed=0, options={"start_step": 100000})


def test_info_reports_cost_slo_latency_and_replicas():
    env = InferenceClusterEnv(scenario="azure-conv")
    env.reset(seed=0)
    _, reward, _, _, info = env.step(env.noop_action())
    assert info["cost/usd"] > 0 and reward < 0
    assert 0.0 <= info["slo/attainment"] <= 1.0
    assert info["latency/ttft_p95_s"] >= info["latency/ttft_p50_s"] > 0
    assert info["replicas"]["h100"]["ready"] == 2
    assert set(info["replicas"]["h100"]) >= {"provisioning", "loading", "ready", "draining"}


def test_the_manuals_examples_run():
    """The env's docstring is its manual; its examples are doctests and must hold."""
    import doctest

    import rlscale.envs.env as env_module

    result = doctest.testmod(env_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
