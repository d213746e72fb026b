"""Natively vectorized environments over the batched simulator (no Python loop over envs).

* :class:`InferenceClusterVectorEnv`: a Gymnasium ``VectorEnv`` (``gym.make_vec`` with
  ``vectorization_mode="vector_entry_point"``), next-step autoreset.
* :class:`~rlscale.envs.sb3_vec_env.InferenceClusterVecEnv` (its own module, so that this one
  never imports torch): a stable-baselines3 ``VecEnv`` for PPO.

Cluster ``i`` seeded with ``s + i`` follows exactly the trajectory of a single
:class:`~rlscale.envs.env.InferenceClusterEnv` reset with seed ``s + i``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from rlscale.envs import dynamics as dyn
from rlscale.envs.env import DEFAULT_SCENARIO
from rlscale.envs.mix import MixedSimulator, mixes_workloads
from rlscale.envs.scenario import Scenario, load_scenario
from rlscale.envs.simulator import ClusterSimulator
from rlscale.envs.workload import WorkloadSeries


def episode_summary(sim: ClusterSimulator | MixedSimulator, i: int) -> dict[str, Any]:
    """Cluster ``i``'s last-step metrics plus its episode's cost by tenant, and, when the
    simulator randomizes, the episode's multipliers (``randomization/rate_scale``, ...)."""
    info = sim.step_info(i)
    info["cost/by_tenant_usd"] = sim.tenant_costs(i)
    info.update(sim.randomization_info(i))
    return info


class BatchedEnvBase:
    """What both vector env flavours share: the simulator, spaces and per-env random streams."""

    sim: ClusterSimulator | MixedSimulator

    def _setup(
        self,
        num_envs: int,
        scenario,
        workload,
        workload_seed,
        split: str,
        randomize: bool,
        episode_latency_stats: bool = False,
    ) -> None:
        sc = load_scenario(scenario)
        # training with a mix of workloads: one simulator per workload, stepped as one batch
        kind = MixedSimulator if mixes_workloads(sc, randomize) else ClusterSimulator
        self.sim = kind(
            sc,
            num_envs,
            workload=workload,
            workload_seed=workload_seed,
            split=split,
            randomize=randomize,
            episode_latency_stats=episode_latency_stats,
        )
        self.single_observation_space, self.single_action_space = self.sim.spaces()
        self.observation_names = self.sim.observation_names
        self._rngs: list[np.random.Generator] = [
            seeding.np_random(None)[0] for _ in range(num_envs)
        ]

    def _reset_one(self, i: int, seed: int | None, start_step: int | None = None) -> None:
        if seed is not None:
            self._rngs[i] = seeding.np_random(int(seed))[0]
        self.sim.reset_cluster(i, self._rngs[i], start_step=start_step)


class InferenceClusterVectorEnv(BatchedEnvBase, VectorEnv):
    """Gymnasium vector env of ``num_envs`` clusters of one scenario (next-step autoreset).

    Arguments as :class:`~rlscale.envs.env.InferenceClusterEnv`'s; episodes lie in the
    training part of the workload's split unless ``split`` says otherwise, and draw the
    scenario's domain randomization when ``randomize`` is set. ``self.sim.episode_latency``
    works only with ``episode_latency_stats=True`` (off by default: it costs about 13% of the
    step time and changes nothing else, :class:`~rlscale.envs.simulator.ClusterSimulator`).
    """

    metadata: ClassVar[dict[str, Any]] = {
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "render_modes": [],
    }

    def __init__(
        self,
        num_envs: int = 1,
        *,
        scenario: str | Scenario = DEFAULT_SCENARIO,
        workload: WorkloadSeries | None = None,
        workload_seed: int = 0,
        split: str = "train",
        randomize: bool = False,
        render_mode: str | None = None,
        episode_latency_stats: bool = False,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported")
        self.num_envs = num_envs
        self.render_mode = None
        self._setup(
            num_envs, scenario, workload, workload_seed, split, randomize, episode_latency_stats
        )
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._started = False

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env; an int seed ``s`` gives env ``i`` the seed ``s + i``."""
        if isinstance(seed, int):
            seeds: Sequence[int | None] = [seed + i for i in range(self.num_envs)]
        elif seed is None:
            seeds = [None] * self.num_envs
        else:
            if len(seed) != self.num_envs:
                raise ValueError(f"{len(seed)} seeds given for {self.num_envs} envs")
            seeds = seed
        start = (options or {}).get("start_step")
        for i, s in enumerate(seeds):
            self._reset_one(i, s, start)
        self._needs_reset[:] = False
        self._started = True
        return self.sim.obs.copy(), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env; an env that finished last step is reset instead (reward 0)."""
        assert self._started, "Call reset before using step"
        actions = np.asarray(actions, dtype=np.int64)
        finished = np.flatnonzero(self._needs_reset)
        self.sim.step(actions)
        rewards = self.sim.rewards.copy()
        truncated = self.sim.truncated().copy()
        for i in finished:
            self._reset_one(int(i), None)
            rewards[i] = 0.0
            truncated[i] = False
        self._needs_reset = truncated.copy()
        info: dict[str, Any] = {
            "cost/usd": self.sim.metrics[:, dyn.M_COST].copy(),
            "slo/attainment": self.sim.metrics[:, dyn.M_ATTAIN].copy(),
        }
        return self.sim.obs.copy(), rewards, np.zeros(self.num_envs, dtype=bool), truncated, info
