"""Training on a mix of workloads with the same pools: one batched simulator per workload.

A scenario's ``randomization.workloads`` lists other workloads (a trace of another service, a
synthetic seasonal load, ...) and the share of the training clusters each runs; the scenario's
own workload keeps the rest. :class:`MixedSimulator` builds one
:class:`~rlscale.envs.simulator.ClusterSimulator` per workload, each over its own clusters
and the training part of its own split, and stands for them as one batch of ``num_clusters``
clusters: the vector envs step it as they step a single simulator (one kernel call per
workload and step).

What stays one: the pools, SLO, reward and every other setting (each part runs the scenario
with only its workload replaced), the episode length (the scenario's own part's, fitted to its
split), the observation space (checked equal), and the rate that normalizes rate observations
(the scenario's own workload's mean, so a rate reads the same in every part and in the
service). Each part draws its own episode windows and randomization multipliers, and a mixed
part's own randomness (synthetic noise and bursts, the spot markets) comes from its own seed
(:data:`PART_SEED_STRIDE`), so a mixed synthetic service is not the scenario's own noise over
again. Evaluation never mixes: it runs the scenario as written. Validation during training
runs each mixed workload as well, on its own split's validation windows
(:func:`mixed_parts`, built as here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlscale.envs.scenario import Scenario, ScenarioError, load_scenario
from rlscale.envs.simulator import ClusterSimulator, scenario_workload
from rlscale.envs.workload import WorkloadSeries

PART_SEED_STRIDE = 100_003
"""Mixed part ``k`` (1, 2, ...) builds its workload and spot markets with ``workload_seed +
k * PART_SEED_STRIDE``; the scenario's own part keeps ``workload_seed``."""


def mix_sizes(num_clusters: int, shares: list[float]) -> list[int]:
    """Clusters per part: the scenario's own first, then one per mixed workload, by largest
    remainder; every part gets at least one cluster.

    :raises ScenarioError: fewer clusters than parts.
    """
    parts = [1.0 - sum(shares), *shares]
    if num_clusters < len(parts):
        raise ScenarioError(
            f"{len(parts)} workloads mixed (the scenario's own and {len(shares)} in "
            f"randomization.workloads) need at least {len(parts)} clusters, got {num_clusters}"
        )
    exact = [num_clusters * p for p in parts]
    sizes = [max(1, int(x)) for x in exact]
    order = sorted(range(len(parts)), key=lambda k: sizes[k] - exact[k])
    k = 0
    while sum(sizes) < num_clusters:
        sizes[order[k % len(order)]] += 1
        k += 1
    while sum(sizes) > num_clusters:
        j = max((j for j in range(len(parts)) if sizes[j] > 1), key=lambda j: sizes[j] - exact[j])
        sizes[j] -= 1
    return sizes


@dataclass(frozen=True)
class MixedPart:
    """One mixed workload as its part of a mix runs it (see :func:`mixed_parts`)."""

    where: str
    """Where the scenario declares it, for errors: ``randomization.workloads[k] (kind path)``."""
    scenario: Scenario
    """The scenario with only its workload replaced (and the own part's episode length)."""
    workload_seed: int
    primary: ClusterSimulator

    def workload(self) -> WorkloadSeries:
        """The part's workload series (what :meth:`build` replays)."""
        try:
            return scenario_workload(self.scenario, self.workload_seed)
        except (ScenarioError, OSError, ValueError) as err:
            raise ScenarioError(f"{self.where}: {err}") from err

    def build(self, num_clusters: int, **kw: Any) -> ClusterSimulator:
        """A simulator of ``num_clusters`` clusters on this part, rates in the scenario's own
        units (``kw``: :class:`ClusterSimulator`'s keywords, ``split``, ``workload``, ...);
        refused, naming the part, when it cannot be built or is observed otherwise."""
        try:
            part = ClusterSimulator(
                self.scenario,
                num_clusters,
                workload_seed=self.workload_seed,
                reference_rps=self.primary.reference_rps,
                **kw,
            )
        except (ScenarioError, OSError, ValueError) as err:
            raise ScenarioError(f"{self.where}: {err}") from err
        own_obs, part_obs = self.primary.spaces()[0], part.spaces()[0]
        if part.observation_names != self.primary.observation_names or not (
            np.array_equal(own_obs.low, part_obs.low)
            and np.array_equal(own_obs.high, part_obs.high)
        ):
            raise ScenarioError(
                f"{self.where} observes {part.observation_names}, the scenario's own "
                f"{self.primary.observation_names}; mixed workloads must be observed alike "
                f"(request classes on or off in both)"
            )
        return part


def mixed_parts(primary: ClusterSimulator, workload_seed: int) -> list[MixedPart]:
    """The mixed workloads of ``primary``'s scenario (``randomization.workloads``), each as its
    part runs it: ``primary``'s scenario (the episode length its own part runs, fitted to its
    split) with only the workload replaced, the workload seed ``workload_seed + k *
    PART_SEED_STRIDE`` and the own part's reference rate. Training's mix
    (:class:`MixedSimulator`) and validation (``rlscale.training.validate``) build them alike.
    """
    sc = primary.scenario
    mixed = sc.randomization.workloads if sc.randomization is not None else []
    return [
        MixedPart(
            where=f"randomization.workloads[{k - 1}] ({w.workload.kind} {w.workload.path or ''})",
            scenario=sc.model_copy(update={"workload": w.workload}),
            workload_seed=workload_seed + k * PART_SEED_STRIDE,
            primary=primary,
        )
        for k, w in enumerate(mixed, start=1)
    ]


class MixedSimulator:
    """``num_clusters`` training clusters over the scenario's workload and its mixed ones.

    The surface the vector envs and training use of a :class:`ClusterSimulator`, over the
    parts in order (clusters ``0..n0-1`` run the scenario's own workload, the next ones the
    first mixed workload, ...). ``primary`` is the part on the scenario's own workload: what
    the exported policy is described by (pools, observation layout, reference rate).
    """

    def __init__(
        self,
        scenario: Scenario | str,
        num_clusters: int,
        *,
        workload: WorkloadSeries | None = None,
        workload_seed: int = 0,
        split: str = "train",
        randomize: bool = True,
        episode_latency_stats: bool = False,
    ) -> None:
        sc = load_scenario(scenario)
        mixed = sc.randomization.workloads if sc.randomization is not None else []
        sizes = mix_sizes(num_clusters, [w.share for w in mixed])
        kw = {
            "split": split,
            "randomize": randomize,
            "episode_latency_stats": episode_latency_stats,
        }
        self.primary = ClusterSimulator(
            sc, sizes[0], workload=workload, workload_seed=workload_seed, **kw
        )
        self.parts: list[ClusterSimulator] = [self.primary]
        for part, n in zip(mixed_parts(self.primary, workload_seed), sizes[1:], strict=True):
            self.parts.append(part.build(n, **kw))
        self.scenario = self.primary.scenario
        self.num_clusters = int(num_clusters)
        self.sizes = sizes
        self._bounds = np.cumsum([0, *sizes])

    # --- routing -----------------------------------------------------------------------------
    def _part(self, i: int) -> tuple[ClusterSimulator, int]:
        """The part cluster ``i`` lies in and its index there."""
        if not 0 <= i < self.num_clusters:
            raise IndexError(f"cluster {i} outside [0, {self.num_clusters})")
        k = int(np.searchsorted(self._bounds, i, side="right")) - 1
        return self.parts[k], i - int(self._bounds[k])

    def _cat(self, name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in self.parts])

    # --- what the vector envs and training use ---------------------------------------------------
    @property
    def observation_names(self) -> list[str]:
        return self.primary.observation_names

    @property
    def pool_names(self) -> list[str]:
        return self.primary.pool_names

    def spaces(self) -> tuple[Any, Any]:
        return self.primary.spaces()

    def noop_action(self) -> np.ndarray:
        return self.primary.noop_action()

    def reset_cluster(self, i: int, rng: np.random.Generator, start_step: int | None = None):
        part, j = self._part(i)
        part.reset_cluster(j, rng, start_step=start_step)

    def step(self, actions: np.ndarray) -> None:
        """Advance every cluster by one decision interval under ``actions`` [N, 2 * pools]."""
        a = np.asarray(actions).reshape(self.num_clusters, -1)
        for part, lo, hi in zip(self.parts, self._bounds[:-1], self._bounds[1:], strict=True):
            part.step(a[lo:hi])

    @property
    def action_nvec(self) -> np.ndarray:
        return self.primary.action_nvec

    @property
    def pools(self) -> list:
        return self.primary.pools

    @property
    def randomize(self) -> bool:
        return self.primary.randomize

    def set_randomize(self, on: bool) -> None:
        for p in self.parts:
            p.set_randomize(on)

    def randomization(self, i: int) -> dict[str, float]:
        part, j = self._part(i)
        return part.randomization(j)

    def mix_info(self) -> list[dict[str, object]]:
        """What the mix is: each part's workload and clusters (recorded with an export)."""
        return [
            {"workload": p.workload.name, "clusters": n}
            for p, n in zip(self.parts, self.sizes, strict=True)
        ]

    def __getattr__(self, name: str) -> object:
        # reached only for what the mix does not define: say so instead of a bare AttributeError
        if name.startswith("_") or name in ("primary", "parts"):
            raise AttributeError(name)
        raise AttributeError(
            f"'{name}' is not defined on a mix of workloads (MixedSimulator); read it from "
            f".primary (the scenario's own workload) or from one of .parts"
        )

    @property
    def obs(self) -> np.ndarray:
        return self._cat("obs")

    @property
    def rewards(self) -> np.ndarray:
        return self._cat("rewards")

    @property
    def metrics(self) -> np.ndarray:
        return self._cat("metrics")

    @property
    def steps(self) -> np.ndarray:
        return self._cat("steps")

    def truncated(self) -> np.ndarray:
        return np.concatenate([p.truncated() for p in self.parts])

    def step_requests(self) -> tuple[np.ndarray, np.ndarray]:
        good, counted = zip(*(p.step_requests() for p in self.parts), strict=True)
        return np.concatenate(good), np.concatenate(counted)

    def set_violation_price(self, usd: float) -> None:
        for p in self.parts:
            p.set_violation_price(usd)

    @property
    def violation_price(self) -> float:
        return self.primary.violation_price

    def step_info(self, i: int) -> dict:
        part, j = self._part(i)
        info = part.step_info(j)
        info["workload"] = part.workload.name
        return info

    def tenant_costs(self, i: int) -> dict[str, float]:
        part, j = self._part(i)
        return part.tenant_costs(j)

    def randomization_info(self, i: int) -> dict[str, float]:
        part, j = self._part(i)
        return part.randomization_info(j)

    def episode_latency(self, i: int) -> dict[str, float]:
        part, j = self._part(i)
        return part.episode_latency(j)


def mixes_workloads(scenario: Scenario, randomize: bool) -> bool:
    """Training clusters of ``scenario`` run a mix of workloads (randomization on, and the
    scenario lists others)."""
    return bool(randomize and scenario.randomization and scenario.randomization.workloads)
