"""Knative Pod Autoscaler (KPA) on concurrency: stable and panic windows.

The algorithm, from the Knative Serving documentation ("Configuring the autoscaler",
"Autoscale sample") and ``pkg/autoscaler/scaling/autoscaler.go`` (``Scale``):

- Observed concurrency (requests in the revision: in flight plus waiting in the queue-proxy or
  the activator) is averaged over the stable window (60 s) and the panic window (10% of it,
  6 s). The per-pod target is ``container-concurrency-target-default`` (100) times
  ``container-concurrency-target-percentage`` (70%) = 70.
- ``ready = max(1, ready pods)``; ``dspc = ceil(stable / target)``,
  ``dppc = ceil(panic / target)``, each kept within
  ``[floor(ready / max-scale-down-rate), ceil(max-scale-up-rate * ready)]`` (rates 2 and 1000).
- Panic starts (or is extended) whenever ``dppc / ready >= 2.0`` (panic threshold 200%). While
  panicking the KPA takes ``max(stable, panic)`` proposals and never goes below the highest
  count it set during the panic; it leaves panic once the threshold has not been crossed for a
  whole stable window.
- ``scale-down-delay`` (0 s by default) holds the highest count of that window before scaling
  down; ``min-scale`` 0 / ``max-scale`` 0 (unbounded) bound the result, and reaching 0 waits
  ``scale-to-zero-grace-period`` (30 s).

Adaptations to a 30 s decision interval. The KPA ticks every 2 s over 1 s buckets; here one
concurrency sample arrives per interval (the state at the decision). The stable window averages
the samples of the last 60 s (two); the 6 s panic window is shorter than an interval, so it is
approximated by the latest sample alone, which is the most recent 6 s the KPA would see. The
panic exit test ``panic_time + stable_window < now`` is kept in seconds. The first decision
holds the current scale: the autoscaler has no scrape yet (Knative's ``ErrNoData``, on which
``Scale`` does not act), and the simulator's first state of an episode shows nothing in flight,
which a real revision under load never reports. ``max-scale`` 0 means the pool's quota.

Metric. Concurrency = ``in_flight + queue``: what queue-proxies and the activator count. The
default target of 70 concurrent requests is a web-service default; an LLM replica's useful
concurrency depends on the model and SLO, which is why baselines are tuned per scenario.
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


@dataclass(frozen=True)
class KnativePolicy:
    """Knative KPA on concurrency (see the module docstring).

    :param pool: the revision's pool; None = cheapest on-demand per capacity_rps.
    :param container_concurrency_target: ``container-concurrency-target-default`` (100).
    :param target_utilization: ``container-concurrency-target-percentage`` / 100 (0.7).
    :param stable_window_s: ``stable-window`` (60 s).
    :param panic_window_percentage: ``panic-window-percentage`` (10 = 6 s of 60 s).
    :param panic_threshold_percentage: ``panic-threshold-percentage`` (200).
    :param max_scale_up_rate: ``max-scale-up-rate`` (1000).
    :param max_scale_down_rate: ``max-scale-down-rate`` (2).
    :param scale_down_delay_s: ``scale-down-delay`` (0 s).
    :param scale_to_zero_grace_period_s: ``scale-to-zero-grace-period`` (30 s).
    :param min_scale: ``min-scale`` (0).
    :param max_scale: ``max-scale``; None (Knative's 0, unbounded) = the pool's quota.
    """

    name: ClassVar[str] = "knative"
    pool: str | None = None
    container_concurrency_target: float = 100.0
    target_utilization: float = 0.7
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_down_delay_s: float = 0.0
    scale_to_zero_grace_period_s: float = 30.0
    min_scale: int = 0
    max_scale: int | None = None

    def __post_init__(self) -> None:
        checks = (
            ("container_concurrency_target", self.container_concurrency_target > 0, "> 0"),
            ("target_utilization", 0 < self.target_utilization <= 1, "in (0, 1]"),
            ("stable_window_s", 6 <= self.stable_window_s <= 3600, "in [6, 3600] s"),
            ("panic_window_percentage", 1 <= self.panic_window_percentage <= 100, "in [1, 100]"),
            (
                "panic_threshold_percentage",
                110 <= self.panic_threshold_percentage <= 1000,
                "in [110, 1000]",
            ),
            ("max_scale_up_rate", self.max_scale_up_rate > 1, "> 1"),
            ("max_scale_down_rate", self.max_scale_down_rate > 1, "> 1"),
            ("scale_down_delay_s", 0 <= self.scale_down_delay_s <= 3600, "in [0, 3600] s"),
            ("scale_to_zero_grace_period_s", self.scale_to_zero_grace_period_s >= 0, ">= 0"),
            ("min_scale", self.min_scale >= 0, ">= 0"),
        )
        require_all(self, checks)
        require_max_at_least_min(self, "max_scale", "min_scale")

    @property
    def target_per_pod(self) -> float:
        """Concurrency per pod the KPA aims at (100 x 0.7 = 70 by default)."""
        return self.container_concurrency_target * self.target_utilization

    @property
    def panic_window_s(self) -> float:
        """The panic window in seconds (6 s by default)."""
        return self.stable_window_s * self.panic_window_percentage / 100.0

    def initial_memory(self) -> Memory:
        """Not started, no samples, not panicking, no delay window, not heading to zero."""
        return {
            "started": False,
            "samples": [],
            "panic_time_s": None,
            "max_panic_pods": 0,
            "delay": [],
            "zero_since_s": None,
        }

    def decide(self, state: ClusterState, memory: Memory) -> tuple[Decision, Memory]:
        """One KPA ``Scale`` on the latest concurrency sample; see the module docstring."""
        dep = deployment(state, self.pool, self.max_scale)
        now = state.time_s
        if not memory.get("started", False):
            # the autoscaler starts here: no scrape yet (Knative's ErrNoData), so it holds
            held = {**self.initial_memory(), "started": True}
            n = (
                dep.current
                if dep.current > 0
                else clamp(dep.handover, self.min_scale, dep.max_replicas)
            )
            return Decision(single_pool_targets(state, dep, n), reason="knative: no data yet"), held
        concurrency = state.in_flight + state.queue
        samples = [
            *window(memory.get("samples", []), now, self.stable_window_s),
            [now, concurrency],
        ]
        stable = sum(s[1] for s in samples) / len(samples)
        panic_samples = window(samples, now, self.panic_window_s)
        # a panic window shorter than the interval holds only the latest sample
        panic = sum(s[1] for s in panic_samples) / len(panic_samples)

        ready = max(1.0, float(dep.ready))
        max_up = math.ceil(self.max_scale_up_rate * ready)
        max_down = math.floor(ready / self.max_scale_down_rate)
        dspc = math.ceil(stable / self.target_per_pod)
        dppc = math.ceil(panic / self.target_per_pod)
        desired_stable = int(min(max(dspc, max_down), max_up))
        desired_panic = int(min(max(dppc, max_down), max_up))

        panic_time = memory.get("panic_time_s")
        max_panic = int(memory.get("max_panic_pods", 0))
        over = dppc / ready >= self.panic_threshold_percentage / 100.0
        if over:
            panic_time = now  # start, or extend, the panic
        elif panic_time is not None and panic_time + self.stable_window_s < now:
            panic_time, max_panic = None, 0  # the surge is in the stable window now

        desired = desired_stable
        if panic_time is not None:
            # never scale down while panicking: hold the highest count of the panic
            max_panic = max(max_panic, desired_stable, desired_panic)
            desired = max_panic
        delay = list(memory.get("delay", []))
        if self.scale_down_delay_s > 0:
            delay = [*window(delay, now, self.scale_down_delay_s), [now, desired]]
            desired = int(max(d[1] for d in delay))

        hi = max(dep.max_replicas, 1)
        n = clamp(desired, self.min_scale, hi)
        zero_since = memory.get("zero_since_s")
        if n == 0:
            zero_since = now if zero_since is None else zero_since
            if now - zero_since < self.scale_to_zero_grace_period_s and dep.current > 0:
                n = 1  # the grace period before the last pod goes
        else:
            zero_since = None
        if dep.current == 0 and dep.handover > 0:
            n = max(n, clamp(dep.handover, self.min_scale, hi))  # take over other pools' load
        mode = "panic" if panic_time is not None else "stable"
        reason = (
            f"knative: {mode} conc {stable:.1f}/{panic:.1f} target {self.target_per_pod:g} -> {n}"
        )
        new_memory = {
            "started": True,
            "samples": samples,
            "panic_time_s": panic_time,
            "max_panic_pods": max_panic,
            "delay": delay,
            "zero_since_s": zero_since,
        }
        return Decision(single_pool_targets(state, dep, n), reason=reason), new_memory

    def config(self) -> dict[str, Any]:
        """The parameters (what tuning searches and saves)."""
        return asdict(self)


PARAM_SPACE: dict[str, list[Any]] = {
    "container_concurrency_target": [2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0],
    "stable_window_s": [60.0, 180.0, 360.0],
    "scale_down_delay_s": [0.0, 300.0],
    "min_scale": [0, 1],
}
"""Tuning grid (120 candidates, sampled down to ``max_trials``); other knobs keep defaults."""

register("knative", factory_for(KnativePolicy), param_space=PARAM_SPACE)
