"""A pool's capacity: the requests/s one ready replica sustains, computed in one place.

A replica's throughput depends on its throughput profile and on the request mix it serves:

    capacity_rps = replica_capacity_rps(profile, mean_prompt_tokens, mean_output_tokens,
                                        max_batched_tokens=scenario.max_batched_tokens)

(:func:`rlscale.envs.profiles.replica_capacity_rps`: the saturation throughput at the largest
batch sequence slots, KV cache and token budget allow, with every request of the mean lengths).
What callers differ in is only where the mean lengths come from, and that is a
:class:`RequestMix`:

* :meth:`RequestMix.of_series`: token-weighted means of a built workload series, what the
  simulator serves (its observations, the evaluation's plots, ``rlscale simulate``, and the
  shadow report's replay);
* :meth:`RequestMix.of_config`: the means of the scenario's configured length distributions,
  for callers without the workload's data (the decision service's default ``capacity_rps``).

For a synthetic workload, or a trace that does not record token lengths, the two agree (up to
sampling); for a trace with recorded lengths the configured distribution is only the fallback
and the series' means are the truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .profiles import ThroughputProfile, load_profile, replica_capacity_rps
from .scenario import Scenario, WorkloadConfig
from .workload import WorkloadSeries, length_moments


@dataclass(frozen=True)
class RequestMix:
    """Mean tokens per request of a workload: what one replica's throughput depends on."""

    prompt_tokens: float
    """Mean prompt tokens per request (at least 1)."""
    output_tokens: float
    """Mean output tokens per request (at least 1)."""

    @classmethod
    def of_series(cls, wl: WorkloadSeries, bins: np.ndarray | None = None) -> RequestMix:
        """Means over the series' ``bins`` (all of them when None), weighted by arrivals.

        Each mean is at least one token, so a window without arrivals still has a mix.
        """
        if bins is None:
            arrivals, prompt, output = wl.arrivals, wl.prompt_tokens, wl.output_tokens
        else:
            arrivals, prompt, output = (
                wl.arrivals[bins],
                wl.prompt_tokens[bins],
                wl.output_tokens[bins],
            )
        n = max(float(arrivals.sum()), 1e-9)
        return cls(max(float(prompt.sum()) / n, 1.0), max(float(output.sum()) / n, 1.0))

    @classmethod
    def of_config(cls, cfg: WorkloadConfig) -> RequestMix:
        """Means of the configured length distributions: lognormals clipped to ``[1, max]``
        (closed form, no data read), as :func:`~rlscale.envs.workload.draw_lengths` samples."""
        return cls(length_moments(cfg.prompt_tokens)[0], length_moments(cfg.output_tokens)[0])


def pool_capacities_rps(
    profiles: Sequence[ThroughputProfile], mix: RequestMix, *, max_batched_tokens: int
) -> np.ndarray:
    """[pools] saturation req/s of one ready replica of each profile for the request mix.

    :param profiles: the pools' throughput profiles, in pool order.
    :param mix: the mean request lengths (:class:`RequestMix`).
    :param max_batched_tokens: the scenario's iteration token budget.
    """
    return np.array(
        [
            replica_capacity_rps(
                prof, mix.prompt_tokens, mix.output_tokens, max_batched_tokens=max_batched_tokens
            )
            for prof in profiles
        ],
        dtype=np.float64,
    )


def scenario_capacities_rps(scenario: Scenario) -> dict[str, float]:
    """Pool name -> saturation req/s of one replica, for the configured request mix.

    For callers that have the scenario but not its workload's data (the decision service);
    a simulator has :attr:`~rlscale.envs.simulator.ClusterSimulator.pool_capacity_rps`, from
    the series it serves.
    """
    caps = pool_capacities_rps(
        [load_profile(p.profile) for p in scenario.pools],
        RequestMix.of_config(scenario.workload),
        max_batched_tokens=scenario.max_batched_tokens,
    )
    return {p.name: float(c) for p, c in zip(scenario.pools, caps, strict=True)}
