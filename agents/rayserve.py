"""Ray Serve autoscaling: a target number of ongoing requests per replica, with delays.

The default policy, from the Ray Serve documentation ("Advanced autoscaling", the
``AutoscalingConfig`` reference) and ``serve/autoscaling_policy.py``
(``replica_queue_length_autoscaling_policy``, ``_calculate_desired_num_replicas``):

- ``total`` = ongoing requests (running on replicas plus queued in handles), averaged over
  ``look_back_period_s`` (30 s). ``error = total / (target_ongoing_requests * running)``.
- ``desired = ceil(running * (1 + (error - 1) * factor))`` with ``upscaling_factor`` when
  ``error >= 1`` and ``downscaling_factor`` otherwise (both default 1, i.e. no smoothing); if the
  smoothing keeps a scale-down from moving (desired == running although unsmoothed it would
  drop) it takes one replica off. Bounded by ``min_replicas`` / ``max_replicas``.
- Delays: the target moves up only once the desired count has stayed above it for
  ``upscale_delay_s`` (30 s) of consecutive decisions, and down only after ``downscale_delay_s``
  (600 s); a decision the other way or equal resets the count. (Current Ray keeps the time of
  the first consecutive decision; older Ray counted 0.1 s control-loop periods, the same rule.)
- With no running replica and requests waiting, it scales to ``max(ceil(upscaling_factor),
  target)``. Defaults: ``target_ongoing_requests`` 2, ``min_replicas`` 1; Ray's default
  ``max_replicas`` of 1 would disable scaling, so it defaults to the pool's quota here.

Adaptations to a 30 s decision interval. Ray's controller runs every 0.1 s; here once per
interval, so the upscale delay of 30 s fires on the second consecutive "up" decision and the
downscale delay of 600 s on the decision 600 s after the first "down". The look-back average is
over the samples taken at decisions in the last ``look_back_period_s`` (one sample at 30 s).

Metric. Ongoing requests = ``in_flight + queue`` (Ray counts requests queued at handles with
those running on replicas); running replicas = ready replicas of the pool; the current target
is ready + starting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from rlscale.agents.base import ClusterState, Decision, Memory
from rlscale.agents.common import (
    clamp,
    deployment,
    factory_for,
    require_all,
    require_max_at_least_min,
    single_pool_targets,
    window,
)
from rlscale.agents.registry import register


def desired_num_replicas(
    total_requests: float,
    running: int,
    target_ongoing_requests: float,
    upscaling_factor: float,
    downscaling_factor: float,
    min_replicas: int,
    max_replicas: int,
) -> int:
    """``_calculate_desired_num_replicas`` of Ray Serve; ``running`` must be >= 1."""
    error = total_requests / (target_ongoing_requests * running)
    factor = upscaling_factor if error >= 1 else downscaling_factor
    desired = math.ceil(running * (1 + (error - 1) * factor))
    if math.ceil(running * error) < running and desired == running:
        desired -= 1  # smoothing must not leave a possible scale-down stuck
    return clamp(desired, min_replicas, max_replicas)


@dataclass(frozen=True)
class RayServePolicy:
    """Ray Serve's default autoscaling policy (see the module docstring).

    :param pool: the deployment's pool; None = cheapest on-demand per capacity_rps.
    :param target_ongoing_requests: ongoing requests per replica to aim at (Ray: 2).
    :param upscale_delay_s: consecutive "up" time before scaling up (Ray: 30 s).
    :param downscale_delay_s: consecutive "down" time before scaling down (Ray: 600 s).
    :param downscale_to_zero_delay_s: the delay for 1 -> 0 (None = downscale_delay_s).
    :param upscaling_factor: gain on scale-up decisions (Ray: None = 1).
    :param downscaling_factor: gain on scale-down decisions (Ray: None = 1).
    :param look_back_period_s: averaging window of the request metric (Ray: 30 s).
    :param min_replicas: (Ray: 1).
    :param max_replicas: None = the pool's quota.
    """

    name: ClassVar[str] = "rayserve"
    pool: str | None = None
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    downscale_to_zero_delay_s: float | None = None
    upscaling_factor: float = 1.0
    downscaling_factor: float = 1.0
    look_back_period_s: float = 30.0
    min_replicas: int = 1
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        checks = (
            ("target_ongoing_requests", self.target_ongoing_requests > 0, "> 0"),
            ("upscale_delay_s", self.upscale_delay_s >= 0, ">= 0"),
            ("downscale_delay_s", self.downscale_delay_s >= 0, ">= 0"),
            (
                "downscale_to_zero_delay_s",
                self.downscale_to_zero_delay_s is None or self.downscale_to_zero_delay_s >= 0,
                ">= 0",
            ),
            ("upscaling_factor", self.upscaling_factor > 0, "> 0"),
            ("downscaling_factor", self.downscaling_factor > 0, "> 0"),
            ("look_back_period_s", self.look_back_period_s > 0, "> 0"),
            ("min_replicas", self.min_replicas >= 0, ">= 0"),
        )
        require_all(self, checks)
        require_max_at_least_min(self, "max_replicas", "min_replicas")

    def initial_memory(self) -> Memory:
        """No samples; no pending decision."""
        return {"samples": [], "decision_counter": 0, "decision_since_s": None}

    def _apply_delay(
        self, desired: int, target: int, memory: Memory, now: float
    ) -> tuple[int, int, float | None]:
        """Ray's delay logic: returns the decision, the counter and the first decision's time."""
        counter = int(memory.get("decision_counter", 0))
        since = memory.get("decision_since_s")
        if desired > target:
            if counter < 0:
                counter, since = 0, None
            counter += 1
            since = now if since is None else since
            if now - since >= self.upscale_delay_s:
                return desired, 0, None
            return target, counter, since
        if desired < target:
            if counter > 0:
                counter, since = 0, None
            counter -= 1
            since = now if since is None else since
            delay = self.downscale_delay_s
            if target == 1 and self.downscale_to_zero_delay_s is not None:
                delay = self.downscale_to_zero_delay_s
            if now - since >= delay:
                return desired, 0, None
            return target, counter, since
        return target, 0, None

    def decide(self, state: ClusterState, memory: Memory) -> tuple[Decision, Memory]:
        """One run of Ray's policy on the look-back average; see the module docstring."""
        dep = deployment(state, self.pool, self.max_replicas)
        now = state.time_s
        samples = [
            *window(memory.get("samples", []), now, self.look_back_period_s),
            [now, state.in_flight + state.queue],
        ]
        total = sum(s[1] for s in samples) / len(samples)
        hi = max(dep.max_replicas, 1)
        target = dep.current
        counter, since = 0, None
        if dep.current == 0 and dep.handover > 0:
            n, why = clamp(dep.handover, self.min_replicas, hi), "handover"
        elif dep.ready == 0:
            # nothing running yet: only the cold-start rule applies
            n = max(math.ceil(self.upscaling_factor), target) if total > 0 else target
            n, why = min(n, hi), "no running replica"
        else:
            desired = desired_num_replicas(
                total,
                dep.ready,
                self.target_ongoing_requests,
                self.upscaling_factor,
                self.downscaling_factor,
                self.min_replicas,
                hi,
            )
            n, counter, since = self._apply_delay(desired, target, memory, now)
            why = f"ongoing {total:.1f} on {dep.ready} running, desired {desired}"
        new_memory = {"samples": samples, "decision_counter": counter, "decision_since_s": since}
        return (
            Decision(single_pool_targets(state, dep, n), reason=f"rayserve: {why} -> {n}"),
            new_memory,
        )

    def config(self) -> dict[str, Any]:
        """The parameters (what tuning searches and saves)."""
        return asdict(self)


PARAM_SPACE: dict[str, list[Any]] = {
    "target_ongoing_requests": [1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0],
    "upscale_delay_s": [0.0, 30.0, 60.0],
    "downscale_delay_s": [120.0, 300.0, 600.0],
}
"""Tuning grid (90 candidates, sampled down to ``max_trials``); other knobs keep Ray's defaults."""

register("rayserve", factory_for(RayServePolicy), param_space=PARAM_SPACE)
