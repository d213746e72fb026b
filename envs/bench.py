"""``rlscale bench env``: how fast the simulator steps, single and batched.

Numbers come from wall-clock time on this machine; each configuration is measured for a fixed
time after a warm-up step (which also triggers numba's compilation or cache load).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import gymnasium as gym
import numpy as np

from rlscale.envs.env import DEFAULT_SCENARIO, InferenceClusterEnv
from rlscale.envs.scenario import load_scenario
from rlscale.envs.vector import InferenceClusterVectorEnv


def _rate(step, n_envs: int, seconds: float, min_steps: int = 3) -> float:
    """Env-steps per second of calling ``step()`` repeatedly for about ``seconds``."""
    step()
    done = 0
    start = time.perf_counter()
    while True:
        step()
        done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and done >= min_steps:
            return done * n_envs / elapsed


def _action_bank(space: gym.Space, n: int, seed: int = 0) -> list[np.ndarray]:
    space.seed(seed)
    return [space.sample() for _ in range(n)]


TWO_WEEK_SCENARIO = "synthetic-2week"


def bench_env(
    scenario: str = DEFAULT_SCENARIO,
    *,
    episode_scenario: str = TWO_WEEK_SCENARIO,
    sizes: list[int] | None = None,
    sync_sizes: list[int] | None = None,
    seconds: float = 2.0,
) -> dict[str, Any]:
    """Measure steps per second of the single env, the batched simulator and SyncVectorEnv.

    Steps per second are measured on ``scenario`` (the env's default unless told otherwise);
    the time of one whole episode, holding replicas fixed, on ``episode_scenario`` (two weeks).
    Actions are random (a fixed bank, so the same work every run): scaling, draining and
    cold starts all happen, not just idle stepping. The batched rates run the scenario as
    written; ``training_env_steps_per_s`` runs, at the largest size, what ``rlscale train``
    steps: the training part with domain randomization and the scenario's mix of workloads
    (``training_workloads`` simulators, one kernel call each per step).
    """
    sizes = sizes or [1, 64, 1024]
    sync_sizes = sync_sizes if sync_sizes is not None else [64, 1024]
    sc = load_scenario(scenario)

    env = InferenceClusterEnv(scenario=sc)
    env.reset(seed=0)
    bank = _action_bank(env.action_space, 64)
    k = [0]

    def single_step() -> None:
        k[0] += 1
        _, _, _, truncated, _ = env.step(bank[k[0] % len(bank)])
        if truncated:
            env.reset()

    single = _rate(single_step, 1, seconds, min_steps=100)

    # one whole episode (two weeks), holding replicas fixed
    # the scenario's whole episode, not the split's shorter training one
    long_env = InferenceClusterEnv(scenario=load_scenario(episode_scenario), split="all")
    long_env.reset(seed=1)
    noop = long_env.noop_action()
    start = time.perf_counter()
    for _ in range(long_env.sim.episode_steps):
        long_env.step(noop)
    episode_s = time.perf_counter() - start

    batched: dict[str, float] = {}
    for n in sorted(set(sizes) | set(sync_sizes)):
        venv = InferenceClusterVectorEnv(n, scenario=sc)
        venv.reset(seed=0)
        vbank = _action_bank(venv.action_space, 16)
        j = [0]

        def vec_step(venv=venv, vbank=vbank, j=j) -> None:
            j[0] += 1
            venv.step(vbank[j[0] % len(vbank)])

        batched[str(n)] = _rate(vec_step, n, seconds)

    # what training steps: the training part, domain randomization and any mix of workloads
    n_train = max(sizes)
    tvenv = InferenceClusterVectorEnv(n_train, scenario=sc, split="train", randomize=True)
    tvenv.reset(seed=0)
    tbank = _action_bank(tvenv.action_space, 16)
    jt = [0]

    def train_step() -> None:
        jt[0] += 1
        tvenv.step(tbank[jt[0] % len(tbank)])

    training = _rate(train_step, n_train, seconds)
    mixed = len(getattr(tvenv.sim, "parts", [tvenv.sim]))

    speedup: dict[str, float] = {}
    sync_rates: dict[str, float] = {}
    for n in sync_sizes:
        sync = gym.vector.SyncVectorEnv(
            [lambda: InferenceClusterEnv(scenario=sc) for _ in range(n)],
            autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
        )
        sync.reset(seed=0)
        sbank = _action_bank(sync.action_space, 4)
        j2 = [0]

        def sync_step(sync=sync, sbank=sbank, j2=j2) -> None:
            j2[0] += 1
            sync.step(sbank[j2[0] % len(sbank)])

        rate = _rate(sync_step, n, seconds)
        sync.close()
        sync_rates[str(n)] = rate
        speedup[str(n)] = batched[str(n)] / rate

    return {
        "scenario": sc.name,
        "control_interval_s": sc.control_interval_s,
        "substep_s": sc.substep_s,
        "single_env_steps_per_s": round(single, 1),
        "episode_scenario": long_env.scenario.name,
        "episode_hours": long_env.scenario.episode_hours,
        "episode_steps": long_env.sim.episode_steps,
        "episode_seconds": round(episode_s, 3),
        "batched_env_steps_per_s": {k: round(v, 1) for k, v in batched.items()},
        "training_env_steps_per_s": {str(n_train): round(training, 1)},
        "training_workloads": mixed,
        "sync_vector_env_steps_per_s": {k: round(v, 1) for k, v in sync_rates.items()},
        "speedup_vs_sync_vector_env": {k: round(v, 2) for k, v in speedup.items()},
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "numba_threads": _numba_threads(),
    }


def _numba_threads() -> int:
    import numba

    return int(numba.get_num_threads())
