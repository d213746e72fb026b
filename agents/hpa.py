"""Kubernetes Horizontal Pod Autoscaler (autoscaling/v2) scaling one Deployment on utilization.

The algorithm, from the Kubernetes documentation ("Horizontal Pod Autoscaling", algorithm
details) and ``pkg/controller/podautoscaler`` (``replica_calculator.go``, ``horizontal.go``):

1. Raw proposal: ``desired = ceil(ready_pods * current_metric / target)``, unchanged while the
   usage ratio is within the tolerance, ``|1 - ratio| <= 0.1``. On a scale-up, pods that are not
   ready yet count as using 0%, and if that brings the ratio inside the tolerance or below 1 the
   count stays (so replicas still starting are not asked for again).
2. Stabilization: the current count is brought within [lowest recommendation of the scale-up
   window, highest of the scale-down window]: a scale-down goes no lower than the *highest*
   recommendation of the last 300 s (``behavior.scaleDown.stabilizationWindowSeconds``), and
   never higher than the current count; scale-up has no window (0 s). The controller records
   the current size as a recommendation the first time it sees the target.
3. Rate limits (default ``behavior``): scale-up by at most ``max(4 pods, 100%)`` per 15 s
   period (``selectPolicy: Max``), scale-down by up to 100% per 15 s; then ``minReplicas`` /
   ``maxReplicas``.

Time. The HPA syncs every 15 s (``--horizontal-pod-autoscaler-sync-period``) of metrics time
(``state.time_s``), however often it is asked, and each sync reads the latest metric sample.
In the simulator a decision comes every 30 s, so it runs the two syncs due, at ``now - 15 s``
and ``now`` (the simulator reports once per interval, as metrics-server would report one
sample per scrape): a scale-up can compound over them (2 -> 6 -> 12 pods). The decision
service may ask far more often (every 0.5 s when it polls Prometheus); between two syncs the
count set at the latest one stands. Either way the stabilization window and the per-period
scale-up limit count seconds, as the real controller counts them, and a scale-down happens at
the first sync at which the last higher recommendation is 300 s old.

Metric. "Utilization" is the share of the Deployment's saturation throughput in use,
``arrival_rate_rps / (ready * capacity_rps)``, the analogue of CPU usage / request: it grows in
proportion to load per replica, which is what the proportional rule ``ready * metric / target``
assumes. ``gpu_util`` (a DCGM-style duty cycle) is ~1 whenever any request runs and says nothing
about headroom, as in real LLM serving. KV-cache use (vLLM's ``gpu_cache_usage_perc``,
``metric="kv_cache"``) is offered too, but it only rises near saturation for short contexts (on
``azure-conv`` it stays ~1%), so scaling on it reacts late.

Multi-pool: one Deployment, as in ``agents/common.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from rlscale.agents.base import ClusterState, Decision, Memory
from rlscale.agents.common import (
    Deployment,
    clamp,
    deployment,
    factory_for,
    require,
    single_pool_targets,
    window,
)
from rlscale.agents.registry import register

# --- the HPA algorithm ------------------------------------------------------------------------


@dataclass(frozen=True)
class HPABehavior:
    """``spec.behavior`` and controller flags of an HPA; defaults are Kubernetes' own."""

    tolerance: float = 0.1
    """``--horizontal-pod-autoscaler-tolerance``: no change while |1 - ratio| <= this."""
    sync_period_s: float = 15.0
    """``--horizontal-pod-autoscaler-sync-period``."""
    scale_up_stabilization_s: float = 0.0
    scale_down_stabilization_s: float = 300.0
    scale_up_pods: int = 4
    """Scale-up ``Pods`` policy: pods added per period."""
    scale_up_percent: float = 100.0
    """Scale-up ``Percent`` policy: percent added per period (``selectPolicy: Max``)."""
    scale_down_percent: float = 100.0
    policy_period_s: float = 15.0
    """``periodSeconds`` of every scaling policy."""


def resource_replicas(
    current: int, ready: int, starting: int, utilization: float, target: float, tolerance: float
) -> int:
    """``GetResourceReplicas``: the metric's proposal for a utilization target.

    ``utilization`` is the mean over ready pods; pods still starting are "unready": ignored on a
    scale-down and counted at 0% on a scale-up.
    """
    if ready <= 0:
        return current  # no pod reports a metric: the controller cannot compute and holds
    ratio = utilization / target
    if starting <= 0 or ratio <= 1.0:
        if abs(1.0 - ratio) <= tolerance:
            return current
        return math.ceil(ratio * ready)
    new_ratio = utilization * ready / ((ready + starting) * target)
    if abs(1.0 - new_ratio) <= tolerance or new_ratio < 1.0:
        return current  # the pods already starting cover it
    proposal = math.ceil(new_ratio * (ready + starting))
    return current if proposal < current else proposal


def external_average_replicas(
    current: int, total: float, target_per_pod: float, tolerance: float
) -> int:
    """``GetExternalPerPodMetricReplicas``: an External metric with an ``AverageValue`` target."""
    if current <= 0:
        return math.ceil(total / target_per_pod)
    ratio = total / (target_per_pod * current)
    if abs(1.0 - ratio) > tolerance:
        return math.ceil(total / target_per_pod)
    return current


def _stabilize(recs: list[list[float]], t: float, raw: int, current: int, b: HPABehavior) -> int:
    """``stabilizeRecommendationWithBehaviors``; appends ``raw`` to ``recs``.

    The current count is brought within the lowest recommendation of the scale-up window and
    the highest of the scale-down window (both counting ``raw``): a window only delays a
    change, it never moves the count against the proposal (a lower proposal with higher
    recommendations in the scale-down window holds the current count, not the highest one).
    """
    lowest = highest = raw
    for ts, n in recs:
        if ts > t - b.scale_up_stabilization_s:
            lowest = min(int(n), lowest)
        if ts > t - b.scale_down_stabilization_s:
            highest = max(int(n), highest)
    recs.append([t, raw])
    return min(max(current, lowest), highest)


def _rate_limited(
    t: float,
    current: int,
    desired: int,
    lo: int,
    hi: int,
    up: list[list[float]],
    down: list[list[float]],
    b: HPABehavior,
) -> int:
    """``convertDesiredReplicasWithBehaviorRate``: scaling policies, then min/max."""
    if desired > current:
        added = sum(n for ts, n in up if ts > t - b.policy_period_s)
        start = current - int(added)
        limit = max(start + b.scale_up_pods, math.ceil(start * (1.0 + b.scale_up_percent / 100)))
        return min(desired, min(hi, max(limit, current)))
    if desired < current:
        removed = sum(n for ts, n in down if ts > t - b.policy_period_s)
        start = current + int(removed)
        limit = int(start * (1.0 - b.scale_down_percent / 100))
        return max(desired, max(lo, min(limit, current)))
    return desired


def hpa_control(
    *,
    now: float,
    interval_s: float,
    current: int,
    ready: int,
    starting: int,
    propose: Callable[[int, int, int], int],
    behavior: HPABehavior,
    min_replicas: int,
    max_replicas: int,
    memory: Memory,
) -> tuple[int, Memory]:
    """The HPA syncs due by ``now``; returns the replica count and the new memory.

    The controller syncs every ``sync_period_s`` of metrics time (``now``), however often it
    is asked: the syncs due since the latest one run (at most the ``interval_s / period`` of
    one decision interval, the latest ones), and between two syncs the count set at the
    latest one stands. The first decision (or one after the clock went back) runs the
    interval's syncs, ending at ``now``. So a caller deciding every 0.5 s (the service
    polling Prometheus) gets what a controller syncing every 15 s sets; replayed at every
    call, the syncs would record scale events for counts the cluster has not applied yet
    and use up the rate limits, and crowd the window's recommendations out.

    :param propose: ``(current, ready, starting) -> replicas``, the metric's raw proposal.
    :param memory: ``{"recs", "up", "down", "synced"}``: recommendations and scale events as
        ``[time_s, count]`` lists, and the latest sync as ``[time_s, count]`` (not modified;
        a new dict is returned).
    """
    b = behavior
    per_interval = max(1, round(interval_s / b.sync_period_s))
    synced = memory.get("synced")
    if synced is None or now < synced[0] - b.sync_period_s:
        n_syncs = per_interval
        first_t = now - (n_syncs - 1) * b.sync_period_s
    else:
        # (a microsecond of slack, so that float times of whole periods count as due)
        due = math.floor((now - synced[0] + 1e-6) / b.sync_period_s)
        if due < 1:
            return int(synced[1]), dict(memory)
        n_syncs = min(due, per_interval)
        first_t = synced[0] + (due - n_syncs + 1) * b.sync_period_s
    recs = [list(r) for r in memory.get("recs", [])]
    up = [list(e) for e in memory.get("up", [])]
    down = [list(e) for e in memory.get("down", [])]
    if not recs:
        recs.append([first_t, current])  # recordInitialRecommendation
    for k in range(n_syncs):
        t = first_t + k * b.sync_period_s
        if current > max_replicas:
            desired = max_replicas
        elif current < min_replicas:
            desired = min_replicas
        else:
            raw = propose(current, ready, starting)
            stable = _stabilize(recs, t, raw, current, b)
            desired = _rate_limited(t, current, stable, min_replicas, max_replicas, up, down, b)
        if desired > current:
            up.append([t, desired - current])
            starting += desired - current
        elif desired < current:
            down.append([t, current - desired])
            # Deployments remove not-ready pods first
            cut = current - desired
            from_starting = min(cut, starting)
            starting -= from_starting
            ready -= cut - from_starting
        current = desired
    keep_s = max(b.scale_up_stabilization_s, b.scale_down_stabilization_s)
    # The controller records one recommendation per sync, so a window never holds more than
    # this many. A caller deciding far more often (the service under a runaway client) would
    # otherwise grow the window, and every decision's copy of it, without bound.
    most = math.ceil(keep_s / b.sync_period_s) + 2
    return current, {
        "recs": window(recs, now, keep_s)[-most:],
        "up": window(up, now, b.policy_period_s)[-most:],
        "down": window(down, now, b.policy_period_s)[-most:],
        "synced": [first_t + (n_syncs - 1) * b.sync_period_s, current],
    }


METRICS = ("throughput", "kv_cache")


@dataclass(frozen=True)
class HPAPolicy:
    """Kubernetes HPA on a per-replica utilization metric (see the module docstring).

    :param pool: the Deployment's pool; None = cheapest on-demand per capacity_rps.
    :param metric: ``throughput`` (arrival rate / ready saturation throughput) or ``kv_cache``.
    :param target_utilization: ``averageUtilization`` target as a share (0.6 = 60%).
    :param tolerance: no change while |1 - utilization / target| <= tolerance (K8s: 0.1).
    :param sync_period_s: controller sync period (K8s: 15 s).
    :param scale_down_stabilization_s: scale-down stabilization window (K8s: 300 s).
    :param scale_up_stabilization_s: scale-up stabilization window (K8s: 0 s).
    :param scale_up_pods: scale-up policy, pods per period (K8s: 4).
    :param scale_up_percent: scale-up policy, percent per period (K8s: 100).
    :param scale_down_percent: scale-down policy, percent per period (K8s: 100).
    :param policy_period_s: ``periodSeconds`` of the scaling policies (K8s: 15 s).
    :param min_replicas: ``minReplicas`` (K8s default 1; 0 needs an alpha feature gate).
    :param max_replicas: ``maxReplicas``; None = the pool's quota.
    """

    name: ClassVar[str] = "hpa"
    pool: str | None = None
    metric: str = "throughput"
    target_utilization: float = 0.6
    tolerance: float = 0.1
    sync_period_s: float = 15.0
    scale_down_stabilization_s: float = 300.0
    scale_up_stabilization_s: float = 0.0
    scale_up_pods: int = 4
    scale_up_percent: float = 100.0
    scale_down_percent: float = 100.0
    policy_period_s: float = 15.0
    min_replicas: int = 1
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        n = self.name
        require(self.metric in METRICS, n, "metric", self.metric, f"one of {METRICS}")
        require(
            0 < self.target_utilization <= 1.5,
            n,
            "target_utilization",
            self.target_utilization,
            "must be in (0, 1.5]",
        )
        require(0 <= self.tolerance < 1, n, "tolerance", self.tolerance, "must be in [0, 1)")
        require(self.sync_period_s > 0, n, "sync_period_s", self.sync_period_s, "must be > 0")
        for param in ("scale_down_stabilization_s", "scale_up_stabilization_s"):
            value = getattr(self, param)
            require(0 <= value <= 3600, n, param, value, "must be in [0, 3600] s (K8s limit)")
        require(self.scale_up_pods >= 0, n, "scale_up_pods", self.scale_up_pods, "must be >= 0")
        require(
            self.scale_up_percent >= 0, n, "scale_up_percent", self.scale_up_percent, "must be >= 0"
        )
        require(
            0 <= self.scale_down_percent <= 100,
            n,
            "scale_down_percent",
            self.scale_down_percent,
            "must be in [0, 100]",
        )
        require(self.policy_period_s > 0, n, "policy_period_s", self.policy_period_s, "must be > 0")
        require(
            self.min_replicas >= 1,
            n,
            "min_replicas",
            self.min_replicas,
            "must be >= 1 (an HPA cannot scale to zero)",
        )
        require(
            self.max_replicas is None or self.max_replicas >= self.min_replicas,
            n,
            "max_replicas",
            self.max_replicas,
            f"must be >= min_replicas ({self.min_replicas})",
        )

    @property
    def behavior(self) -> HPABehavior:
        """The ``spec.behavior`` these parameters describe."""
        return HPABehavior(
            tolerance=self.tolerance,
            sync_period_s=self.sync_period_s,
            scale_up_stabilization_s=self.scale_up_stabilization_s,
            scale_down_stabilization_s=self.scale_down_stabilization_s,
            scale_up_pods=self.scale_up_pods,
            scale_up_percent=self.scale_up_percent,
            scale_down_percent=self.scale_down_percent,
            policy_period_s=self.policy_period_s,
        )

    def utilization(self, state: ClusterState, dep: Deployment) -> float:
        """Mean utilization of the Deployment's ready replicas under ``metric``."""
        if self.metric == "kv_cache":
            return state.kv_util
        if dep.ready <= 0 or dep.pool.capacity_rps <= 0:
            return 0.0
        return state.arrival_rate_rps / (dep.ready * dep.pool.capacity_rps)

    def initial_memory(self) -> Memory:
        """No recommendations or scale events yet."""
        return {"recs": [], "up": [], "down": []}

    def decide(self, state: ClusterState, memory: Memory) -> tuple[Decision, Memory]:
        """The 15 s HPA syncs due, on the latest metric sample; see the module docstring."""
        dep = deployment(state, self.pool, self.max_replicas)
        hi = max(dep.max_replicas, self.min_replicas)
        if dep.current == 0 and dep.handover > 0:
            # a new Deployment takes over what other pools hold, then the HPA runs
            n = clamp(dep.handover, self.min_replicas, hi)
            # the count is not the controller's: its next decision syncs at once
            memory = {k: v for k, v in memory.items() if k != "synced"}
            return Decision(single_pool_targets(state, dep, n), reason="hpa: handover"), memory
        util = self.utilization(state, dep)

        def propose(current: int, ready: int, starting: int) -> int:
            return resource_replicas(
                current, ready, starting, util, self.target_utilization, self.tolerance
            )

        n, new_memory = hpa_control(
            now=state.time_s,
            interval_s=state.interval_s,
            current=dep.current,
            ready=dep.ready,
            starting=dep.starting,
            propose=propose,
            behavior=self.behavior,
            min_replicas=self.min_replicas,
            max_replicas=hi,
            memory=memory,
        )
        reason = f"hpa: {self.metric} {util:.2f}/{self.target_utilization:.2f} -> {n}"
        since_s = state.time_s - new_memory["synced"][0]
        if since_s > 1e-6:
            reason += f" (set at the sync {since_s:.1f} s ago)"
        return Decision(single_pool_targets(state, dep, n), reason=reason), new_memory

    def config(self) -> dict[str, Any]:
        """The parameters (what tuning searches and saves)."""
        return asdict(self)


PARAM_SPACE: dict[str, list[Any]] = {
    "target_utilization": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "scale_down_stabilization_s": [60.0, 150.0, 300.0, 600.0],
    "min_replicas": [1, 2],
}
"""Tuning grid (56 candidates); everything else keeps the Kubernetes defaults."""

register("hpa", factory_for(HPAPolicy), param_space=PARAM_SPACE)
