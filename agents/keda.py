"""KEDA ScaledObject on a queue-length metric: an External metric fed to the HPA, plus 0 <-> 1.

How KEDA scales, from its documentation ("Scaling Deployments", ScaledObject spec) and
``pkg/scaling/executor``:

- A trigger reports a metric (here the request queue) with a per-replica target of type
  ``AverageValue``. KEDA creates an HPA for the Deployment with that External metric; the HPA
  proposes ``desired = ceil(metric / target)`` when ``|1 - metric / (target * replicas)|``
  exceeds the 0.1 tolerance (``GetExternalPerPodMetricReplicas``), then applies its default
  ``behavior`` (300 s scale-down stabilization, scale-up ``max(4 pods, 100%)`` per 15 s), with
  ``minReplicas = max(minReplicaCount, 1)`` and ``maxReplicas = maxReplicaCount``.
- KEDA itself polls the trigger every ``pollingInterval`` (30 s) for activity
  (``metric > activationThreshold``, default 0). An active trigger on a Deployment at 0
  replicas scales it to ``max(minReplicaCount, 1)``; with ``minReplicaCount: 0`` the
  Deployment goes back to 0 once no trigger has been active for ``cooldownPeriod`` (300 s).
  Defaults: minReplicaCount 0, maxReplicaCount 100 (capped here at the pool's quota).

Adaptations. KEDA's 30 s polling interval equals the decision interval, so each decision is one
KEDA poll followed by the HPA's syncs on the same sample (see :mod:`rlscale.agents.hpa` for how
the two 15 s syncs per interval are run). The cooldown clock starts at the first decision if the
trigger is idle then (KEDA starts it when the ScaledObject is created).

Metric. ``queue_plus_running`` (default) is requests waiting plus requests being decoded,
``queue + in_flight``, as vLLM KEDA setups sum ``vllm:num_requests_waiting`` and
``vllm:num_requests_running``: it is proportional to load per replica, so the AverageValue rule
settles at a replica count. ``queue`` alone (waiting requests only) is 0 whenever capacity
suffices, so it asks for ``minReplicaCount`` until a backlog forms, then jumps: the classic
queue-length scaler, offered for comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from rlscale.agents.base import ClusterState, Decision, Memory
from rlscale.agents.common import (
    clamp,
    deployment,
    factory_for,
    require,
    require_all,
    require_max_at_least_min,
    single_pool_targets,
)
from rlscale.agents.hpa import (
    HPABehavior,
    external_average_replicas,
    hpa_control,
)
from rlscale.agents.registry import register

METRICS = ("queue_plus_running", "queue")


@dataclass(frozen=True)
class KEDAPolicy:
    """KEDA ScaledObject with a queue-length trigger (see the module docstring).

    :param pool: the Deployment's pool; None = cheapest on-demand per capacity_rps.
    :param metric: ``queue_plus_running`` (waiting + decoding requests) or ``queue``.
    :param target_per_replica: the trigger's ``AverageValue`` target (requests per replica).
    :param activation_threshold: ``activationThreshold``: active while the metric exceeds it.
    :param polling_interval_s: ``pollingInterval`` (KEDA: 30 s); informational, equal to the
        decision interval here.
    :param cooldown_period_s: ``cooldownPeriod`` before scaling to 0 (KEDA: 300 s).
    :param min_replica_count: ``minReplicaCount`` (KEDA: 0).
    :param max_replica_count: ``maxReplicaCount``; None = the pool's quota.
    :param tolerance: HPA tolerance (0.1).
    :param scale_down_stabilization_s: HPA scale-down stabilization (300 s).
    """

    name: ClassVar[str] = "keda"
    pool: str | None = None
    metric: str = "queue_plus_running"
    target_per_replica: float = 32.0
    activation_threshold: float = 0.0
    polling_interval_s: float = 30.0
    cooldown_period_s: float = 300.0
    min_replica_count: int = 0
    max_replica_count: int | None = None
    tolerance: float = 0.1
    scale_down_stabilization_s: float = 300.0

    def __post_init__(self) -> None:
        require(self.metric in METRICS, self.name, "metric", self.metric, f"one of {METRICS}")
        require_all(
            self,
            (
                ("target_per_replica", self.target_per_replica > 0, "> 0"),
                ("activation_threshold", self.activation_threshold >= 0, ">= 0"),
                ("polling_interval_s", self.polling_interval_s > 0, "> 0"),
                ("cooldown_period_s", self.cooldown_period_s >= 0, ">= 0"),
                ("min_replica_count", self.min_replica_count >= 0, ">= 0"),
                ("tolerance", 0 <= self.tolerance < 1, "in [0, 1)"),
                (
                    "scale_down_stabilization_s",
                    0 <= self.scale_down_stabilization_s <= 3600,
                    "in [0, 3600] s",
                ),
            ),
        )
        require_max_at_least_min(self, "max_replica_count", "min_replica_count")

    def metric_value(self, state: ClusterState) -> float:
        """The trigger's metric: total over the Deployment, as the scaler reports it."""
        if self.metric == "queue":
            return state.queue
        return state.queue + state.in_flight

    def initial_memory(self) -> Memory:
        """No HPA history; the cooldown clock starts at the first decision."""
        return {"hpa": {"recs": [], "up": [], "down": []}, "last_active_s": None}

    def decide(self, state: ClusterState, memory: Memory) -> tuple[Decision, Memory]:
        """One KEDA poll (activation, cooldown to 0), then the HPA on the External metric."""
        dep = deployment(state, self.pool, self.max_replica_count)
        now = state.time_s
        value = self.metric_value(state)
        active = value > self.activation_threshold
        last_active = memory.get("last_active_s")
        if active or last_active is None:
            last_active = now
        hpa_min = max(self.min_replica_count, 1)
        hi = max(dep.max_replicas, hpa_min)
        hpa_memory = memory.get("hpa", {})
        by_hpa = False
        if dep.current == 0:
            if dep.handover > 0:
                n, why = clamp(dep.handover, hpa_min, hi), "handover"
            elif active:
                n, why = hpa_min, "activated"  # KEDA scales 0 -> max(minReplicaCount, 1)
            else:
                n, why = self.min_replica_count, "idle"
        elif (
            not active
            and self.min_replica_count == 0
            and now - last_active >= self.cooldown_period_s
        ):
            n, why = 0, "cooldown"
        else:
            by_hpa = True

            def propose(current: int, ready: int, starting: int) -> int:
                return external_average_replicas(
                    current, value, self.target_per_replica, self.tolerance
                )

            n, hpa_memory = hpa_control(
                now=now,
                interval_s=state.interval_s,
                current=dep.current,
                ready=dep.ready,
                starting=dep.starting,
                propose=propose,
                behavior=HPABehavior(
                    tolerance=self.tolerance,
                    scale_down_stabilization_s=self.scale_down_stabilization_s,
                ),
                min_replicas=hpa_min,
                max_replicas=hi,
                memory=hpa_memory,
            )
            why = f"{self.metric} {value:.1f}/{self.target_per_replica:g} per replica"
        if not by_hpa:  # KEDA set the count, not the HPA: the HPA's next decision syncs at once
            hpa_memory = {k: v for k, v in hpa_memory.items() if k != "synced"}
        new_memory = {"hpa": hpa_memory, "last_active_s": last_active}
        return Decision(
            single_pool_targets(state, dep, n), reason=f"keda: {why} -> {n}"
        ), new_memory

    def config(self) -> dict[str, Any]:
        """The parameters (what tuning searches and saves)."""
        return asdict(self)


PARAM_SPACE: dict[str, list[Any]] = {
    "metric": ["queue_plus_running"],
    "target_per_replica": [2.0, 4.0, 8.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0],
    "scale_down_stabilization_s": [60.0, 150.0, 300.0],
    "min_replica_count": [0, 1],
}
"""Tuning grid (60 candidates); the ``queue`` metric is left out (it cannot hold a size)."""

register("keda", factory_for(KEDAPolicy), param_space=PARAM_SPACE)
