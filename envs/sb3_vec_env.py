"""A stable-baselines3 ``VecEnv`` over the batched simulator: one kernel call per step.

Kept apart from :mod:`rlscale.envs.vector` because importing stable-baselines3 imports torch,
which neither the Gymnasium envs nor the decision service need.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from rlscale.envs.env import DEFAULT_SCENARIO
from rlscale.envs.scenario import Scenario
from rlscale.envs.vector import BatchedEnvBase, episode_summary
from rlscale.envs.workload import WorkloadSeries


class InferenceClusterVecEnv(BatchedEnvBase, VecEnv):
    """stable-baselines3 ``VecEnv`` of ``num_envs`` clusters, stepped by one kernel call.

    Per-step ``infos`` are empty dicts except when an episode ends: then they carry the
    episode's summary metrics, ``episode`` (return and length, as SB3's Monitor would) and
    ``terminal_observation``. Every env's step metrics stay readable as ``self.sim.metrics``.

    Episodes lie wholly in the training part of the workload's split
    (:mod:`rlscale.envs.splits`), so training never sees held-out traffic; ``split`` picks
    another part (``"validation"``, ``"heldout"``) or the whole trace (``"all"``).
    ``randomize=True`` draws every episode's multipliers from the scenario's ``randomization``
    ranges (domain randomization); the episode-end infos then carry them
    (``randomization/rate_scale``, ...). ``self.sim.episode_latency`` works only with
    ``episode_latency_stats=True`` (see :class:`~rlscale.envs.vector.InferenceClusterVectorEnv`).
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        scenario: str | Scenario = DEFAULT_SCENARIO,
        workload: WorkloadSeries | None = None,
        workload_seed: int = 0,
        split: str = "train",
        randomize: bool = False,
        episode_latency_stats: bool = False,
    ) -> None:
        self.render_mode = None
        self._setup(
            num_envs, scenario, workload, workload_seed, split, randomize, episode_latency_stats
        )
        VecEnv.__init__(self, num_envs, self.single_observation_space, self.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(num_envs)

    # --- the VecEnv protocol -------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        """Reset every env with the seeds and options set before; returns observations."""
        for i in range(self.num_envs):
            self._reset_one(i, self._seeds[i], self._options[i].get("start_step"))
        self._seeds = [None] * self.num_envs
        self._returns[:] = 0.0
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return self.sim.obs.copy()

    def step_async(self, actions: np.ndarray) -> None:
        """Remember the actions for :meth:`step_wait`."""
        self._actions = np.asarray(actions, dtype=np.int64)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Advance every env; finished envs reset at once (SB3's convention)."""
        assert self._actions is not None, "step_async must come before step_wait"
        self.sim.step(self._actions)
        rewards = self.sim.rewards.astype(np.float32)
        self._returns += self.sim.rewards
        dones = self.sim.truncated().copy()
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        ended = np.flatnonzero(dones)
        if ended.size:  # read once: a mix of workloads concatenates its parts' arrays per read
            last_obs, steps = self.sim.obs, self.sim.steps
        for i in ended:
            i = int(i)
            info = episode_summary(self.sim, i)
            info["terminal_observation"] = last_obs[i].copy()
            info["TimeLimit.truncated"] = True
            info["episode"] = {"r": float(self._returns[i]), "l": int(steps[i])}
            infos[i] = info
            self._returns[i] = 0.0
            self._reset_one(i, None)
        return self.sim.obs.copy(), rewards, dones, infos

    def close(self) -> None:
        """Nothing to release: the simulator holds only arrays."""

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        """An attribute of the (single, shared) simulator-backed env, once per index."""
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        """Set an attribute (shared by every index)."""
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list:
        """Call a method of this env once per index."""
        method = getattr(self, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices=None) -> list[bool]:
        """No env here is wrapped."""
        return [False for _ in self._get_indices(indices)]
