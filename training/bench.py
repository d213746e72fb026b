"""``rlscale bench train``: is the simulator ever what PPO waits on?

PPO end to end (rollouts and updates, stable-baselines3) in env-steps per second on a scenario
and on CartPole-v1 with the same PPO settings, measured back to back in one process, and their
ratio. CartPole's env costs next to nothing, so its rate is what PPO itself (the policy forward
passes and the updates) allows on this machine; a ratio near 1 means the simulator adds little.

Thread pools decide this on a small machine (torch, numba's kernel and onnxruntime each start
one), and they are fixed when a library loads, so each thread setting is measured in a fresh
process: ``OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1``, and the machine's defaults.

Each rate is given in wall seconds and in the process's CPU seconds: on a machine shared with
other work, wall time also counts their turns on the cores (and CartPole, measured second,
meets other load than the scenario), so ``cpu_ratio`` is the comparison that holds there; on
an idle machine with one thread each the two agree. PPO is built as training builds it
(:func:`~rlscale.training.policy.new_ppo`); ``policy="sb3"`` measures SB3's own ``MlpPolicy``
(one torch ``Categorical`` per action head) instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

from rlscale.training.config import TRAIN_SCENARIO, TrainConfig

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
THREAD_SETTINGS = ("one", "default")
POLICIES = ("multidiscrete", "sb3")
"""What PPO trains: ``multidiscrete`` (training's :class:`~rlscale.training.policy.
MultiDiscretePolicy`, all heads in one tensor) or ``sb3`` (SB3's ``MlpPolicy``, one torch
``Categorical`` per head: the policy training used before, kept to measure the difference)."""


def _timed(venv: Any) -> Any:
    """``venv`` wrapped so that the time spent stepping it (the env's share) is counted, in
    wall and in CPU seconds."""
    from stable_baselines3.common.vec_env import VecEnvWrapper

    class Timed(VecEnvWrapper):
        seconds = 0.0
        cpu_seconds = 0.0

        def reset(self) -> Any:
            return self.venv.reset()

        def step_wait(self) -> Any:
            t, c = time.perf_counter(), time.process_time()
            out = self.venv.step_wait()
            Timed.seconds += time.perf_counter() - t
            Timed.cpu_seconds += time.process_time() - c
            return out

    return Timed(venv)


def _ppo(venv: Any, config: TrainConfig, policy: str) -> Any:
    from stable_baselines3 import PPO

    from rlscale.training.policy import new_ppo

    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r}: expected one of {POLICIES}")
    if policy == "sb3":
        return PPO("MlpPolicy", venv, **config.ppo_kwargs())
    return new_ppo(venv, config.ppo_kwargs())


def _ppo_rate(venv: Any, config: TrainConfig, rollouts: int, policy: str) -> dict[str, float]:
    """Env-steps per second (wall and CPU) of ``rollouts`` PPO iterations after one warm-up
    iteration, and the share of that time spent stepping the env.

    On a shared machine wall time also counts the other processes' turns on the cores; the
    process's CPU time does not, so the CPU rates compare back-to-back runs fairly there (with
    one thread per library, CPU seconds and wall seconds agree on an idle machine).
    """
    venv = _timed(venv)
    model = _ppo(venv, config, policy)
    per_rollout = config.n_envs * config.n_steps
    model.learn(per_rollout)  # warm-up: numba's cache load, torch's first calls
    timed = type(venv)
    timed.seconds = timed.cpu_seconds = 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    model.learn(per_rollout * rollouts, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return {
        "steps_per_s": per_rollout * rollouts / elapsed,
        "env_share": timed.seconds / elapsed,
        "steps_per_cpu_s": per_rollout * rollouts / cpu,
        "env_cpu_share": timed.cpu_seconds / cpu,
    }


def measure(
    scenario: str, config: TrainConfig, rollouts: int, policy: str = POLICIES[0]
) -> dict[str, Any]:
    """Scenario and CartPole rates in this process (its thread settings as they are), both
    with ``policy`` (on CartPole's one ``Discrete`` head the two are SB3's own)."""
    import torch
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv

    venv = InferenceClusterVecEnv(
        config.n_envs, scenario=scenario, split="train", randomize=config.randomize
    )
    venv.seed(config.seed)
    sim = _ppo_rate(VecNormalize(venv, gamma=config.gamma), config, rollouts, policy)
    cart_env = make_vec_env("CartPole-v1", n_envs=config.n_envs, seed=config.seed)
    cart = _ppo_rate(VecNormalize(cart_env, gamma=config.gamma), config, rollouts, policy)
    import numba

    return {
        "scenario_steps_per_s": round(sim["steps_per_s"], 1),
        "cartpole_steps_per_s": round(cart["steps_per_s"], 1),
        "ratio": round(sim["steps_per_s"] / cart["steps_per_s"], 3),
        # the same in CPU seconds of this process: what a loaded machine does not distort
        "scenario_steps_per_cpu_s": round(sim["steps_per_cpu_s"], 1),
        "cartpole_steps_per_cpu_s": round(cart["steps_per_cpu_s"], 1),
        "cpu_ratio": round(sim["steps_per_cpu_s"] / cart["steps_per_cpu_s"], 3),
        # the time PPO spent waiting on env.step (VecNormalize included), as a share
        "scenario_env_share": round(sim["env_share"], 3),
        "cartpole_env_share": round(cart["env_share"], 3),
        "scenario_env_cpu_share": round(sim["env_cpu_share"], 3),
        "cartpole_env_cpu_share": round(cart["env_cpu_share"], 3),
        "action_heads": len(getattr(venv.action_space, "nvec", [1])),
        "policy": policy,
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
    }


def bench_train(
    scenario: str = TRAIN_SCENARIO,
    *,
    rollouts: int = 3,
    threads: tuple[str, ...] = THREAD_SETTINGS,
    config: TrainConfig | None = None,
    policy: str = POLICIES[0],
) -> dict[str, Any]:
    """Measure each thread setting in a fresh process; the result is one JSON-able dict.

    :param policy: one of :data:`POLICIES`.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r}: expected one of {POLICIES}")
    config = config or TrainConfig(scenario=scenario)
    result: dict[str, Any] = {
        "benchmark": "train",
        "scenario": scenario,
        "ppo": {
            "n_envs": config.n_envs,
            "n_steps": config.n_steps,
            "batch_size": config.batch_size,
            "n_epochs": config.n_epochs,
            "net_arch": list(config.net_arch),
            "rollouts": rollouts,
            "policy": policy,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "target_ratio": 0.8,
    }
    for setting in threads:
        env = {k: v for k, v in os.environ.items() if k not in SINGLE_THREAD_ENV}
        if setting == "one":
            env.update(SINGLE_THREAD_ENV)
        cmd = [
            sys.executable,
            "-m",
            "rlscale.training.bench",
            "--scenario",
            scenario,
            "--rollouts",
            str(rollouts),
            "--policy",
            policy,
            "--config-json",
            json.dumps(config.to_dict()),
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"bench train ({setting} threads) failed:\n{out.stderr[-4000:]}")
        result[f"threads_{setting}"] = json.loads(out.stdout.strip().splitlines()[-1])
    best = max((result[f"threads_{s}"]["ratio"] for s in threads), default=0.0)
    result["best_ratio"] = best
    result["best_cpu_ratio"] = max(
        (result[f"threads_{s}"]["cpu_ratio"] for s in threads), default=0.0
    )
    result["meets_target"] = best >= result["target_ratio"]
    return result


def _main() -> None:
    p = argparse.ArgumentParser(description="one thread setting of rlscale bench train")
    p.add_argument("--scenario", default=TRAIN_SCENARIO)
    p.add_argument("--rollouts", type=int, default=3)
    p.add_argument("--config-json", default=None)
    p.add_argument("--policy", choices=POLICIES, default=POLICIES[0])
    args = p.parse_args()
    config = TrainConfig.from_dict(json.loads(args.config_json)) if args.config_json else None
    print(json.dumps(measure(args.scenario, config or TrainConfig(), args.rollouts, args.policy)))


if __name__ == "__main__":
    _main()
