"""Validation during training: the deterministic policy on the validation windows.

Validation windows lie in the training part of the workload (:mod:`rlscale.envs.splits`), never
in the held-out part that ``rlscale evaluate`` and ``rlscale promote`` judge on. All windows and
seeds of a workload run as one batched simulator, so a validation costs about one episode's
kernel calls per workload validated.
What it reports is what the product promises: cost and SLO attainment, not reward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rlscale.envs.mix import mixed_parts
from rlscale.envs.scenario import Scenario
from rlscale.envs.simulator import ClusterSimulator, scenario_workload
from rlscale.envs.splits import Split, split_of

Act = Callable[[np.ndarray], np.ndarray]
"""Raw observations [N, obs] -> actions [N, 2 * pools]."""


@dataclass(frozen=True)
class ValidationResult:
    """Means over the validation episodes (one per workload, window and seed) at
    ``timesteps``. ``cost_usd`` (what model selection compares) is the mean cost of an
    episode; every workload's episodes last the scenario's own episode length unless a mixed
    workload's split is too short for it, and ``cost_usd_per_h`` is per episode, each at its
    own length."""

    timesteps: int
    cost_usd: float
    cost_usd_per_h: float
    slo_attainment: float
    min_attainment: float
    meets_target: float
    target: float
    episodes: list[dict[str, Any]] = field(default_factory=list)
    """One per workload, window and seed: ``workload``, ``start_step``, ``seed``, ``cost_usd``,
    ``slo_attainment``."""

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

    With ``mixed``, the scenario's mixed workloads (``randomization.workloads``, what training
    runs on part of its clusters) are validated too, each on the validation windows of its own
    split (:func:`rlscale.envs.mix.mixed_parts`, built as training builds them): a scenario
    whose own training part is short (a half-hour trace validates on the half hour it trains
    on) then still selects on traffic its policy did not train on. The result is over every
    episode, each tagged with its workload.

    :param scenario: the training scenario (nominal: validation never randomizes).
    :param max_windows: at most this many validation windows per workload (the split's first).
    :param seeds: seeds per window (the simulator's own randomness: spot, cold starts).
    :param workload_seed: the workload's seed, as in training.
    :param mixed: validate on the mixed workloads too.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        max_windows: int = 4,
        seeds: int = 1,
        workload_seed: int = 0,
        mixed: bool = False,
    ) -> None:
        def cases(split: Split) -> list[tuple[int, int]]:
            windows = split.validation_starts[: max(1, max_windows)]
            return [(w, s) for w in windows for s in range(max(1, seeds))]

        own = scenario_workload(scenario, workload_seed)
        own_cases = cases(split_of(scenario, own.n_bins)[0])
        primary = ClusterSimulator(
            scenario,
            len(own_cases),
            workload=own,
            workload_seed=workload_seed,
            split="validation",
            randomize=False,
        )
        # one simulator per workload, each run for its own episode length
        self.parts: list[tuple[ClusterSimulator, list[tuple[int, int]]]] = [(primary, own_cases)]
        for part in mixed_parts(primary, workload_seed) if mixed else []:
            wl = part.workload()
            part_cases = cases(split_of(part.scenario, wl.n_bins)[0])
            sim = part.build(len(part_cases), workload=wl, split="validation", randomize=False)
            self.parts.append((sim, part_cases))
        # each workload's label in the results: its name, with its place in the mix where two
        # parts share a name (the same service with its own seed, the same trace file)
        names = [sim.workload.name for sim, _ in self.parts]
        self.labels = [
            n
            if names.count(n) == 1
            else (n if k == 0 else f"{n} [randomization.workloads[{k - 1}]]")
            for k, n in enumerate(names)
        ]
        self.target = float(primary.scenario.slo.target_attainment)

    @property
    def windows(self) -> list[int]:
        """Start steps of the validation windows on the scenario's own workload."""
        return sorted({w for w, _ in self.parts[0][1]})

    @property
    def workload_windows(self) -> dict[str, list[int]]:
        """Start steps of the validation windows of every workload validated, by its name."""
        return {
            label: sorted({w for w, _ in c})
            for label, (_, c) in zip(self.labels, self.parts, strict=True)
        }

    def run(self, act: Act, timesteps: int = 0) -> ValidationResult:
        """One episode per workload, window and seed under ``act``; the same draws every call."""
        episodes, per_h = [], []
        for label, (sim, part_cases) in zip(self.labels, self.parts, strict=True):
            hours = sim.episode_steps * sim.scenario.control_interval_s / 3600.0
            for i, (start, seed) in enumerate(part_cases):
                sim.reset_cluster(i, np.random.default_rng(10_007 * seed + 1), start_step=start)
            for _ in range(sim.episode_steps):
                sim.step(np.asarray(act(sim.obs.copy()), dtype=np.int64))
            for i, (start, seed) in enumerate(part_cases):
                info = sim.step_info(i)
                episodes.append(
                    {
                        "workload": label,
                        "start_step": float(start),
                        "seed": float(seed),
                        "cost_usd": info["cost/total_usd"],
                        "slo_attainment": info["slo/attainment_episode"],
                    }
                )
                per_h.append(info["cost/total_usd"] / hours)
        cost = np.array([e["cost_usd"] for e in episodes])
        att = np.array([e["slo_attainment"] for e in episodes])
        return ValidationResult(
            timesteps=int(timesteps),
            cost_usd=float(cost.mean()),
            cost_usd_per_h=float(np.mean(per_h)),
            slo_attainment=float(att.mean()),
            min_attainment=float(att.min()),
            meets_target=float((att >= self.target).mean()),
            target=self.target,
            episodes=episodes,
        )
