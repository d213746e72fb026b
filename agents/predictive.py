"""Predictive scaling: forecast the load a cold start ahead and provision for it now.

What it does at each decision:

1. Records the last interval's arrival rate in a seasonal ring (one slot per interval of a day,
   or of a week), kept in memory as a JSON list; ``-1`` marks a slot not seen yet. Before
   overwriting a slot it updates a level ratio (today vs the same slots a season ago, both
   exponentially weighted with ``level_tau_s``), the "trend" of seasonal-naive forecasting.
2. Forecasts the mean rate over ``smoothing_s`` starting at each horizon ``h`` from now to
   ``lead_s`` (the cold-start time: replicas asked for now are ready then):

   - with a full season of history: ``w * seasonal(h) * level + (1 - w) * (ewma + trend * h)``,
     where ``seasonal(h)`` is last season's mean rate over that stretch of the day, and
   - before that: ``ewma + max(trend, 0) * h``, the current EWMA with its recent upward slope.

3. Needs ``max(current, forecasts, state.forecast_rps)`` plus the backlog drained in
   ``backlog_drain_s`` (``current = max(last rate, EWMA)``; ``forecast_rps`` is the workload's
   own next-interval forecast, which knows announced promotions), times ``1 + headroom``.
4. Replicas = ``ceil(need / (capacity_rps * target_utilization))`` on the pool, within
   ``[min_replicas, max_replicas]``; a scale-down waits until the higher targets of the last
   ``scale_down_delay_s`` have passed (Knative's scale-down-delay rule), so noise in the EWMA
   does not churn replicas.

``lead_s`` defaults, through the registry factory, to the sum of the medians of the scenario's
cold-start phases (provisioning + image pull + weight load + engine warm-up) for the pool's
profile; when the pool is chosen at decision time it is the largest over the on-demand pools.
``arrival_rate_rps`` counts response-cache hits too, so sizing on it is conservative by the
cache hit share.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np

from rlscale.agents.base import ClusterState, Decision, Memory
from rlscale.agents.common import (
    check_pool,
    clamp,
    deployment,
    policy_from_params,
    require_all,
    require_max_at_least_min,
    single_pool_targets,
    window,
)
from rlscale.agents.registry import register
from rlscale.envs.coldstart import duration_quantiles_s
from rlscale.envs.profiles import load_profile
from rlscale.envs.scenario import Scenario

SEASONS_S = {"day": 86400.0, "week": 7 * 86400.0}
LEVEL_BOUNDS = (0.5, 2.0)
"""The level ratio is clipped: one odd hour must not double or halve the forecast."""


def cold_start_median_s(scenario: Scenario, pool: str) -> float:
    """Sum of the medians of the cold-start phases of one replica of ``pool``."""
    cfg = scenario.cold_start
    profile = load_profile(scenario.pool(pool).profile)
    half = np.array([0.5])
    phases = (cfg.provisioning, cfg.image_pull, cfg.weight_load, cfg.engine_warmup)
    return float(sum(duration_quantiles_s(d, profile, levels=half)[0] for d in phases))


@dataclass(frozen=True)
class PredictivePolicy:
    """Seasonal forecast of the load a cold start ahead, plus headroom (see the module docstring).

    :param pool: the pool to scale; None = cheapest on-demand per capacity_rps.
    :param lead_s: how far ahead to provision: the cold-start time in seconds.
    :param headroom: spare capacity on top of the forecast (0.2 = 20%).
    :param target_utilization: share of a replica's capacity_rps to plan for.
    :param season: ``day`` or ``week``: the period of the seasonal profile.
    :param seasonal_weight: weight of the seasonal-naive forecast against EWMA + trend.
    :param smoothing_s: width of the stretch of last season averaged per forecast.
    :param level_tau_s: time constant of the today-vs-last-season level ratio.
    :param trend_tau_s: time constant of the smoothed slope of the EWMA.
    :param backlog_drain_s: queued requests are planned to drain within this time.
    :param scale_down_delay_s: hold the highest target of this window before scaling down.
    :param min_replicas: lowest replica count.
    :param max_replicas: None = the pool's quota.
    """

    name: ClassVar[str] = "predictive"
    pool: str | None = None
    lead_s: float = 125.0
    headroom: float = 0.2
    target_utilization: float = 0.7
    season: str = "day"
    seasonal_weight: float = 0.7
    smoothing_s: float = 300.0
    level_tau_s: float = 3600.0
    trend_tau_s: float = 300.0
    backlog_drain_s: float = 60.0
    scale_down_delay_s: float = 300.0
    min_replicas: int = 1
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        checks = (
            ("lead_s", 0 <= self.lead_s <= 3600, "in [0, 3600] s"),
            ("headroom", 0 <= self.headroom <= 5, "in [0, 5]"),
            ("target_utilization", 0 < self.target_utilization <= 1.5, "in (0, 1.5]"),
            ("season", self.season in SEASONS_S, f"one of {tuple(SEASONS_S)}"),
            ("seasonal_weight", 0 <= self.seasonal_weight <= 1, "in [0, 1]"),
            ("smoothing_s", self.smoothing_s > 0, "> 0"),
            ("level_tau_s", self.level_tau_s > 0, "> 0"),
            ("trend_tau_s", self.trend_tau_s > 0, "> 0"),
            ("backlog_drain_s", self.backlog_drain_s > 0, "> 0"),
            ("scale_down_delay_s", self.scale_down_delay_s >= 0, ">= 0"),
            ("min_replicas", self.min_replicas >= 0, ">= 0"),
        )
        require_all(self, checks)
        require_max_at_least_min(self, "max_replicas", "min_replicas")

    def initial_memory(self) -> Memory:
        """No history: the ring is allocated at the first decision, when the interval is known."""
        return {
            "rates": [],
            "seen": 0,
            "level": [0.0, 0.0],
            "trend": 0.0,
            "prev_ewma": None,
            "targets": [],
        }

    # --- forecasting ---------------------------------------------------------------------------

    def _record(
        self, state: ClusterState, memory: Memory
    ) -> tuple[list[float], int, list[float], float]:
        """The ring, count, level sums and trend after recording the last interval."""
        dt = state.interval_s
        slots = max(1, round(SEASONS_S[self.season] / dt))
        rates = list(memory.get("rates") or [])
        if len(rates) != slots:
            rates = [-1.0] * slots
        level = list(memory.get("level", [0.0, 0.0]))
        slot = int(((state.time_of_week_s - dt) % SEASONS_S[self.season]) // dt) % slots
        old = rates[slot]
        if old >= 0:
            a = 1.0 - math.exp(-dt / self.level_tau_s)
            level = [
                level[0] + a * (state.arrival_rate_rps - level[0]),
                level[1] + a * (old - level[1]),
            ]
        rates[slot] = float(state.arrival_rate_rps)
        prev = memory.get("prev_ewma")
        trend = float(memory.get("trend", 0.0))
        if prev is not None:
            slope = (state.arrival_rate_ewma_rps - prev) / dt
            trend += (1.0 - math.exp(-dt / self.trend_tau_s)) * (slope - trend)
        return rates, int(memory.get("seen", 0)) + 1, level, trend

    def _seasonal_rps(self, rates: list[float], start_s: float, dt: float) -> float | None:
        """Last season's mean rate over ``smoothing_s`` from time-of-season ``start_s``."""
        slots = len(rates)
        first = int((start_s % SEASONS_S[self.season]) // dt)
        width = max(1, round(self.smoothing_s / dt))
        seen = [v for k in range(width) if (v := rates[(first + k) % slots]) >= 0]
        return sum(seen) / len(seen) if seen else None

    def forecast_rps(
        self, state: ClusterState, rates: list[float], seen: int, level: list[float], trend: float
    ) -> float:
        """The highest forecast rate over the horizons 0 .. lead_s (one per interval)."""
        dt = state.interval_s
        ewma = state.arrival_rate_ewma_rps
        full_season = seen >= len(rates)
        ratio = 1.0
        if level[1] > 0:
            ratio = min(max(level[0] / level[1], LEVEL_BOUNDS[0]), LEVEL_BOUNDS[1])
        peak = 0.0
        for k in range(int(self.lead_s // dt) + 1):
            h = min(k * dt, self.lead_s)
            local = ewma + max(trend, 0.0) * h
            seasonal = (
                self._seasonal_rps(rates, state.time_of_week_s + h, dt) if full_season else None
            )
            if seasonal is not None:
                w = self.seasonal_weight
                local = w * seasonal * ratio + (1 - w) * (ewma + trend * h)
            peak = max(peak, local)
        return peak

    # --- deciding ------------------------------------------------------------------------------

    def decide(self, state: ClusterState, memory: Memory) -> tuple[Decision, Memory]:
        """Record, forecast, size, hold scale-downs; see the module docstring."""
        dep = deployment(state, self.pool, self.max_replicas)
        now = state.time_s
        rates, seen, level, trend = self._record(state, memory)
        current_rps = max(state.arrival_rate_rps, state.arrival_rate_ewma_rps)
        ahead_rps = self.forecast_rps(state, rates, seen, level, trend)
        need_rps = max(current_rps, ahead_rps, state.forecast_rps)
        need_rps += state.queue / self.backlog_drain_s
        per_replica = dep.pool.capacity_rps * self.target_utilization
        raw = math.ceil(need_rps * (1.0 + self.headroom) / per_replica) if per_replica > 0 else 0
        hi = max(dep.max_replicas, 1)
        raw = clamp(raw, self.min_replicas, hi)
        targets = [*window(memory.get("targets", []), now, self.scale_down_delay_s), [now, raw]]
        n = int(max(t[1] for t in targets))
        if dep.current == 0 and dep.handover > 0:
            n = max(n, clamp(dep.handover, self.min_replicas, hi))
        new_memory = {
            "rates": rates,
            "seen": seen,
            "level": level,
            "trend": trend,
            "prev_ewma": float(state.arrival_rate_ewma_rps),
            "targets": targets,
        }
        reason = (
            f"predictive: now {current_rps:.2f} rps, ahead {ahead_rps:.2f} rps "
            f"({'seasonal' if seen >= len(rates) else 'ewma+trend'}) -> {n}"
        )
        return Decision(single_pool_targets(state, dep, n), reason=reason), new_memory

    def config(self) -> dict[str, Any]:
        """The parameters (what tuning searches and saves)."""
        return asdict(self)


def _factory(scenario: Scenario, params: dict[str, Any]) -> PredictivePolicy:
    """Registry factory: ``lead_s`` defaults to the scenario's median cold start."""
    params = dict(params)
    derive_lead = params.get("lead_s") is None
    if derive_lead:
        params.pop("lead_s", None)  # None is "derive it", not a value to type-check
    policy = policy_from_params(PredictivePolicy, params)
    check_pool(scenario, PredictivePolicy.name, "pool", policy.pool)
    if derive_lead:
        if policy.pool is not None:
            pools = [policy.pool]
        else:
            on_demand = [p.name for p in scenario.pools if p.purchase == "on_demand"]
            pools = on_demand or [p.name for p in scenario.pools]
        lead_s = round(max(cold_start_median_s(scenario, p) for p in pools), 1)
        policy = replace(policy, lead_s=lead_s)
    return policy


PARAM_SPACE: dict[str, list[Any]] = {
    "headroom": [0.0, 0.1, 0.2, 0.4],
    "target_utilization": [0.5, 0.6, 0.7, 0.8, 0.9],
    "scale_down_delay_s": [120.0, 300.0, 600.0],
}
"""Tuning grid (60 candidates); lead_s stays the scenario's cold-start median."""

register("predictive", _factory, param_space=PARAM_SPACE)
