"""Spot-aware scaling as SkyServe does it: an on-demand floor, spot for the rest, fallback.

SkyServe's ``FallbackRequestRateAutoscaler`` (SkyPilot docs "Autoscaling" and "Using spot
instances"; ``sky/serve/autoscalers.py``), which this follows:

- Target replicas from the request rate: ``ceil(qps / target_qps_per_replica)`` with qps
  counted over the last 60 s, within ``[min_replicas, max_replicas]``, moved with hysteresis:
  up only after ``upscale_delay_seconds`` (300 s) of consecutive decisions above the target,
  down only after ``downscale_delay_seconds`` (1200 s) below; straight away from 0.
- ``base_ondemand_fallback_replicas`` on-demand replicas always run; spot gets
  ``target - base``. With ``dynamic_ondemand_fallback`` the autoscaler also launches one
  on-demand replica per spot replica that is wanted but not ready (still provisioning, not
  fulfilled, or preempted), and removes it once the spot one is ready; on-demand never exceeds
  the target. SkyServe's own example spot policy sets ``base_ondemand_fallback_replicas: 1`` and
  ``dynamic_ondemand_fallback: true``, the defaults here (SkyServe's bare defaults are 0 and
  false, which is plain spot).
- Spot placement over zones and regions is out of scope: the simulator has one spot market per
  pool.

Adaptations. SkyServe decides every 20 s and counts delays in decisions
(``int(delay / 20)``); here ``int(delay / interval)`` decisions of 30 s. The 60 s qps window
averages the per-interval arrival rates of the last 60 s (two samples). SkyServe's hysteresis
target starts at ``min_replicas`` for a new service; here it starts at the capacity running
when the scaler takes over (a running service), or ``min_replicas`` if that is larger.
``target_qps_per_replica`` is ``target_utilization * capacity_rps`` of the spot pool, so one
number carries over scenarios. Spot replicas under a preemption notice count as not ready (the
cloud has announced their end). Spot requests beyond what the market can supply now
(``spot_capacity_share`` of the quota) are not made; dynamic fallback covers them on demand.
If the on-demand pool's replicas are of a different size, counts convert by capacity_rps.
Other pools go to 0 once the spot / on-demand pair has a ready replica and none starting.

Request classes (not in SkyServe, which has one class). With batch work (``batch_deadline_s``
> 0 in the state) the target above is the interactive requests' (their rate only), and spot
is also sized for the batch backlog: ``ceil(batch_queue / (batch_drain_share * deadline) /
(batch_utilization * capacity_rps))`` replicas, so that a backlog the spare on-demand room does
not clear is worked off within a share of its window; batch needs no fallback (it can wait).
When the spot pool serves batch only (``serves: batch``), the interactive target runs wholly on
demand and spot holds just the batch replicas.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from rlscale.agents.base import ClusterState, Decision, Memory, PoolState
from rlscale.agents.common import (
    cheapest_pool,
    check_pool,
    clamp,
    policy_from_params,
    require_all,
    require_max_at_least_min,
    window,
)
from rlscale.agents.registry import register
from rlscale.envs.scenario import Scenario, ScenarioError


@dataclass(frozen=True)
class SpotAwarePolicy:
    """SkyServe's request-rate autoscaler with on-demand fallback (see the module docstring).

    :param spot_pool: the spot pool; None = cheapest spot pool per capacity_rps.
    :param ondemand_pool: the on-demand pool; None = cheapest on-demand per capacity_rps.
    :param target_utilization: target_qps_per_replica as a share of the spot capacity_rps.
    :param base_ondemand_fallback_replicas: on-demand replicas always kept (the floor).
    :param dynamic_ondemand_fallback: cover spot replicas that are not ready with on-demand.
    :param upscale_delay_s: consecutive time above the target before it rises (300 s).
    :param downscale_delay_s: consecutive time below the target before it falls (1200 s).
    :param qps_window_s: window of the request-rate average (60 s).
    :param min_replicas: lowest total target (SkyServe ``min_replicas``).
    :param max_replicas: highest total target; None = the spot pool's quota.
    :param batch_utilization: with batch work, the share of a spot replica's capacity_rps the
        batch backlog is sized at (batch has no latency target, so near 1).
    :param batch_drain_share: with batch work, the share of the completion window the backlog
        is worked off in.
    """

    name: ClassVar[str] = "spot_aware"
    reads_batch_backlog: ClassVar[bool] = True
    """It sizes spot for the batch backlog: served where batch work runs, it decides only
    with the batch inputs known (see :func:`rlscale.serving.service.reads_batch`)."""
    spot_pool: str | None = None
    ondemand_pool: str | None = None
    target_utilization: float = 0.6
    base_ondemand_fallback_replicas: int = 1
    dynamic_ondemand_fallback: bool = True
    upscale_delay_s: float = 300.0
    downscale_delay_s: float = 1200.0
    qps_window_s: float = 60.0
    min_replicas: int = 1
    max_replicas: int | None = None
    batch_utilization: float = 0.9
    batch_drain_share: float = 0.5

    def __post_init__(self) -> None:
        checks = (
            ("target_utilization", 0 < self.target_utilization <= 1.5, "in (0, 1.5]"),
            ("base_ondemand_fallback_replicas", self.base_ondemand_fallback_replicas >= 0, ">= 0"),
            ("upscale_delay_s", self.upscale_delay_s >= 0, ">= 0"),
            ("downscale_delay_s", self.downscale_delay_s >= 0, ">= 0"),
            ("qps_window_s", self.qps_window_s > 0, "> 0"),
            ("min_replicas", self.min_replicas >= 0, ">= 0"),
            ("batch_utilization", 0 < self.batch_utilization <= 1.5, "in (0, 1.5]"),
            ("batch_drain_share", 0 < self.batch_drain_share <= 1, "in (0, 1]"),
        )
        require_all(self, checks)
        require_max_at_least_min(self, "max_replicas", "min_replicas")

    def pools(self, state: ClusterState) -> tuple[PoolState, PoolState]:
        """The spot and on-demand pools this policy drives."""
        spot = (
            cheapest_pool(state, "spot") if self.spot_pool is None else state.pool(self.spot_pool)
        )
        od = (
            cheapest_pool(state, "on_demand")
            if self.ondemand_pool is None
            else state.pool(self.ondemand_pool)
        )
        return spot, od

    def batch_replicas(self, state: ClusterState, spot: PoolState) -> int:
        """Spot replicas for the batch backlog (see the module docstring); 0 without batch."""
        if state.batch_deadline_s <= 0 or state.batch_queue <= 0 or spot.capacity_rps <= 0:
            return 0
        need_rps = state.batch_queue / (self.batch_drain_share * state.batch_deadline_s)
        return math.ceil(need_rps / (self.batch_utilization * spot.capacity_rps) - 1e-9)

    def initial_memory(self) -> Memory:
        """No samples; the hysteresis target is set at the first decision."""
        return {"samples": [], "target": None, "up_since": None, "down_since": None}

    def _hysteresis(
        self,
        raw: int,
        target: int,
        up_since: float | None,
        down_since: float | None,
        now: float,
        dt: float,
    ) -> tuple[int, float | None, float | None]:
        """SkyServe's ``_set_target_num_replicas_with_hysteresis``: (target, up_since,
        down_since).

        SkyServe counts consecutive decisions at its fixed interval and moves the target after
        ``int(delay / interval)`` of them. Here the count is kept in metrics time, from the
        first decision of the streak (``*_since``), so the delay is the same however often the
        policy is asked: the ``n``-th decision of a streak at interval ``dt`` comes
        ``(n - 1) * dt`` after its first, which is when the target moves. A caller polling
        every 0.5 s no longer moves it after 4.5 s instead of 300 s.
        """
        if target == 0:
            return raw, up_since, down_since  # faster scale-up when there is no replica
        if raw > target:
            start = now if up_since is None else up_since
            if now - start >= (int(self.upscale_delay_s / dt) - 1) * dt - 1e-9:
                return raw, None, None
            return target, start, None
        if raw < target:
            start = now if down_since is None else down_since
            if now - start >= (int(self.downscale_delay_s / dt) - 1) * dt - 1e-9:
                return raw, None, None
            return target, None, start
        return target, None, None

    def decide(self, state: ClusterState, memory: Memory) -> tuple[Decision, Memory]:
        """Hysteresis target from the request rate, then spot / on-demand split with fallback."""
        spot, od = self.pools(state)
        now, dt = state.time_s, state.interval_s
        samples = [
            *window(memory.get("samples", []), now, self.qps_window_s),
            [now, state.arrival_rate_rps],
        ]
        qps = sum(s[1] for s in samples) / len(samples)
        target_qps = self.target_utilization * spot.capacity_rps
        hi = spot.quota if self.max_replicas is None else min(self.max_replicas, spot.quota)
        hi = max(hi, 1)
        raw = clamp(math.ceil(qps / target_qps), self.min_replicas, hi)
        od_per_spot = spot.capacity_rps / od.capacity_rps if od.capacity_rps > 0 else 1.0
        target = memory.get("target")
        if target is None:
            # take over a running service at its size (in spot-replica units)
            running = sum(p.desired * p.capacity_rps for p in state.pools) / spot.capacity_rps
            target = clamp(max(math.ceil(running - 1e-9), self.min_replicas), 0, hi)
        target, up_since, down_since = self._hysteresis(
            raw, int(target), memory.get("up_since"), memory.get("down_since"), now, dt
        )

        batch_n = self.batch_replicas(state, spot)
        spot_supply = math.floor(spot.quota * spot.spot_capacity_share + 1e-9)
        spot_ready = max(0, round(spot.ready - spot.preempt_notices))
        if spot.serves == "batch":
            # interactive work all on demand; spot only for the batch backlog
            spot_n = min(batch_n, spot_supply)
            od_n = min(math.ceil(target * od_per_spot - 1e-9), od.quota)
        else:
            spot_wanted = max(0, target - self.base_ondemand_fallback_replicas)
            spot_n = min(spot_wanted + batch_n, spot_supply)
            od_n = self.base_ondemand_fallback_replicas
            if self.dynamic_ondemand_fallback:
                # the interactive replicas are covered; batch ones need no fallback
                od_n += math.ceil(max(0, spot_wanted - spot_ready) * od_per_spot - 1e-9)
            od_n = min(od_n, math.ceil(target * od_per_spot - 1e-9), od.quota)

        # pools outside the pair hold their replicas until the pair serves on its own
        filling = spot.ready + od.ready < 1 or spot.starting + od.starting > 0
        replicas = {p.name: round(p.desired) if filling else 0 for p in state.pools}
        replicas[spot.name] = spot_n
        replicas[od.name] = od_n
        reason = (
            f"spot_aware: qps {qps:.2f} target {target} (raw {raw}) -> spot {spot_n} "
            f"(ready {spot_ready}), on-demand {od_n}"
            + (f", batch backlog {state.batch_queue:.0f} -> {batch_n} spot" if batch_n else "")
        )
        new_memory = {
            "samples": samples,
            "target": target,
            "up_since": up_since,
            "down_since": down_since,
        }
        return Decision(replicas, reason=reason), new_memory

    def config(self) -> dict[str, Any]:
        """The parameters (what tuning searches and saves)."""
        return asdict(self)


def _factory(scenario: Scenario, params: dict[str, Any]) -> SpotAwarePolicy:
    """Registry factory: the scenario must have a spot and an on-demand pool."""
    policy = policy_from_params(SpotAwarePolicy, params)
    for purchase in ("spot", "on_demand"):
        if not any(p.purchase == purchase for p in scenario.pools):
            raise ScenarioError(
                f"spot_aware needs a {purchase} pool; scenario '{scenario.name}' has "
                f"{[(p.name, p.purchase) for p in scenario.pools]}"
            )
    for param, purchase in (("spot_pool", "spot"), ("ondemand_pool", "on_demand")):
        name = getattr(policy, param)
        check_pool(scenario, policy.name, param, name)
        if name is not None and scenario.pool(name).purchase != purchase:
            raise ScenarioError(
                f"spot_aware: parameter '{param}' = {name!r} is invalid: pool '{name}' is "
                f"{scenario.pool(name).purchase}, not {purchase}"
            )
    return policy


PARAM_SPACE: dict[str, list[Any]] = {
    "target_utilization": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "base_ondemand_fallback_replicas": [0, 1, 2],
    "upscale_delay_s": [30.0, 120.0, 300.0],
    "downscale_delay_s": [300.0, 1200.0],
}
"""Tuning grid (108 candidates, sampled down to ``max_trials``)."""

register("spot_aware", _factory, param_space=PARAM_SPACE)
