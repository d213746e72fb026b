"""Validation during training: the deterministic policy on the validation windows.

Validation windows lie in the training part of the workload (:mod:`rlscale.envs.splits`), never
in the held-out part that ``rlscale evaluate`` and ``rlscale promote`` judge on. All windows and
seeds run as one batched simulator, so a validation costs about one episode's kernel calls.
What it reports is what the product promises: cost and SLO attainment, not reward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rlscale.envs.scenario import Scenario
from rlscale.envs.simulator import ClusterSimulator, scenario_workload
from rlscale.envs.splits import split_of

Act = Callable[[np.ndarray], np.ndarray]
"""Raw observations [N, obs] -> actions [N, 2 * pools]."""


@dataclass(frozen=True)
class ValidationResult:
    """Means over the validation episodes (one per window and seed) at ``timesteps``."""

    timesteps: int
    cost_usd: float
    cost_usd_per_h: float
    slo_attainment: float
    min_attainment: float
    meets_target: float
    target: float
    episodes: list[dict[str, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Namespaced metrics (``eval/cost_usd``, ``eval/slo_attainment``, ...)."""
        return {
            "eval/cost_usd": self.cost_usd,
            "eval/cost_usd_per_h": self.cost_usd_per_h,
            "eval/slo_attainment": self.slo_attainment,
            "eval/min_attainment": self.min_attainment,
            "eval/meets_target": self.meets_target,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return asdict(self)


class Validator:
    """Runs a policy on fixed validation windows of ``scenario``.

    :param scenario: the training scenario (nominal: validation never randomizes).
    :param max_windows: at most this many validation windows (the split's first ones).
    :param seeds: seeds per window (the simulator's own randomness: spot, cold starts).
    :param workload_seed: the workload's seed, as in training.
    """

    def __init__(
        self, scenario: Scenario, *, max_windows: int = 4, seeds: int = 1, workload_seed: int = 0
    ) -> None:
        split, _ = split_of(scenario, scenario_workload(scenario, workload_seed).n_bins)
        windows = list(split.validation_starts[: max(1, max_windows)])
        self.cases = [(w, s) for w in windows for s in range(max(1, seeds))]
        self.sim = ClusterSimulator(
            scenario, len(self.cases), workload_seed=workload_seed, split="validation"
        )
        self.target = float(self.sim.scenario.slo.target_attainment)
        self.hours = self.sim.episode_steps * self.sim.scenario.control_interval_s / 3600.0

    @property
    def windows(self) -> list[int]:
        """Start steps of the validation windows."""
        return sorted({w for w, _ in self.cases})

    def run(self, act: Act, timesteps: int = 0) -> ValidationResult:
        """One episode per (window, seed) under ``act``; the same draws every call."""
        sim = self.sim
        for i, (start, seed) in enumerate(self.cases):
            sim.reset_cluster(i, np.random.default_rng(10_007 * seed + 1), start_step=start)
        for _ in range(sim.episode_steps):
            sim.step(np.asarray(act(sim.obs.copy()), dtype=np.int64))
        episodes = []
        for i, (start, seed) in enumerate(self.cases):
            info = sim.step_info(i)
            episodes.append(
                {
                    "start_step": float(start),
                    "seed": float(seed),
                    "cost_usd": info["cost/total_usd"],
                    "slo_attainment": info["slo/attainment_episode"],
                }
            )
        cost = np.array([e["cost_usd"] for e in episodes])
        att = np.array([e["slo_attainment"] for e in episodes])
        return ValidationResult(
            timesteps=int(timesteps),
            cost_usd=float(cost.mean()),
            cost_usd_per_h=float(cost.mean() / self.hours),
            slo_attainment=float(att.mean()),
            min_attainment=float(att.min()),
            meets_target=float((att >= self.target).mean()),
            target=self.target,
            episodes=episodes,
        )
