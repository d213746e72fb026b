"""The decision service's HTTP bodies: the cluster's metrics in, replicas per pool out.

The request mirrors :class:`rlscale.agents.base.ClusterState` in the units a live cluster
reports (rates in req/s, latencies in s, replica counts by state), plus the wall-clock
``timestamp`` of the metrics (unix s) so the service can tell stale metrics from fresh ones.

The models check *types* only. Ranges (a negative rate, a utilization above 1, NaN) are checked
by the service, which answers with the rule-based fallback instead of refusing the request:
a caller whose metrics pipeline hiccups still gets a safe answer, and the reason says why.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from rlscale.agents.base import ClusterState
from rlscale.common.budgets import Period
from rlscale.serving.causes import Cause
from rlscale.serving.limits import MAX_POOLS_PER_REQUEST, MAX_TENANTS_PER_REQUEST, OTHER_TENANT

EPOCH_MONDAY_S = 4 * 86400.0
"""1970-01-05 00:00 UTC, the first Monday of the unix epoch: where weeks start."""


class _Body(BaseModel):
    # unknown keys are ignored, not refused: a newer client may send more metrics. Strict: a
    # number is a number (true, "3" are refused, as the OpenAPI schema says), not coerced.
    model_config = ConfigDict(extra="ignore", strict=True)


class ReplicasByState(_Body):
    """Replicas of one pool by lifecycle state (counts; fractions are rounded; null = unknown).

    ``ready`` is what makes the pool's current count known: left out or null, the count is
    unknown and the service holds the pool at its last known-good count (never at 0). Other
    states left out count 0; one given as null makes the count unknown too.
    """

    provisioning: float | None = Field(0.0, description="nodes requested, not yet up")
    loading: float | None = Field(0.0, description="pulling the image or loading weights")
    ready: float | None = Field(
        None,
        description=(
            "serving requests; required for the pool's current count to be known (left out "
            "or null: the pool is held at its last known-good count)"
        ),
    )
    draining: float | None = Field(0.0, description="finishing requests before removal")
    standby: float | None = Field(0.0, description="stopped in the warm pool, ready to restart")
    refilling: float | None = Field(0.0, description="warm-pool replicas being prepared")


class PoolMetrics(_Body):
    """One pool as the cluster reports it now."""

    name: str = Field(description="pool name; must be one of the scenario's pools")
    replicas: ReplicasByState = Field(default_factory=ReplicasByState)
    spot_price_usd_h: float | None = Field(
        None, description="current hourly price of one replica (spot pools); default list price"
    )
    preempt_notices: float | None = Field(
        0.0, description="replicas with a pending preemption notice"
    )
    spot_capacity_share: float | None = Field(
        1.0, description="share of spot requests the market fulfils now, in [0, 1]"
    )
    capacity_rps: float | None = Field(
        None,
        description=(
            "saturation throughput of one ready replica (req/s) for the current request mix; "
            "default: computed from the pool's profile and the scenario's token lengths"
        ),
    )
    batch_per_replica: float | None = Field(0.0, description="running sequences per ready replica")


class RecommendationRequest(_Body):
    """The cluster's current metrics; the body of ``POST /v1/recommendations``."""

    cluster_id: str = Field(
        "default",
        max_length=128,
        description="which cluster; the policy's carried memory is kept per cluster",
    )
    timestamp: float = Field(description="when the metrics were measured (unix time, s)")
    interval_s: float | None = Field(
        None, description="seconds between decisions; default the scenario's control interval"
    )
    arrival_rate_rps: float | None = Field(None, description="request arrival rate (req/s)")
    arrival_rate_ewma_rps: float | None = Field(
        None, description="smoothed arrival rate (req/s); default the arrival rate"
    )
    forecast_rps: float | None = Field(
        None,
        description=(
            "forecast rate of requests reaching the servers, after any response cache, for "
            "the next interval (req/s); default the arrival rate x (1 - the scenario's cache "
            "hit ratio)"
        ),
    )
    queue: float | None = Field(None, description="requests waiting for a replica")
    in_flight: float | None = Field(None, description="requests being served")
    gpu_util: float | None = Field(None, description="mean GPU duty cycle, in [0, 1]")
    kv_util: float | None = Field(None, description="mean KV-cache use, in [0, 1]")
    ttft_p50_s: float | None = Field(None, description="time to first token, median (s)")
    ttft_p95_s: float | None = Field(None, description="time to first token, p95 (s)")
    tpot_p95_s: float | None = Field(None, description="time per output token, p95 (s)")
    slo_attainment: float | None = Field(
        None, description="share of requests within the SLO over the last interval, in [0, 1]"
    )
    dropped: float | None = Field(None, description="requests dropped in the last interval")
    batch_queue: float | None = Field(
        None,
        description=(
            "batch requests waiting (request class batch; not counted in queue); required by "
            "a policy trained with batch work, ignored by others"
        ),
    )
    batch_arrival_rate_rps: float | None = Field(
        None,
        description=(
            "batch request arrival rate (req/s); required by a policy trained with batch "
            "work, ignored by others"
        ),
    )
    pools: list[PoolMetrics] = Field(
        max_length=MAX_POOLS_PER_REQUEST, description="every pool of the cluster"
    )
    production_decision: dict[str, int] | None = Field(
        None,
        max_length=MAX_POOLS_PER_REQUEST,
        description=(
            "shadow mode: replicas per pool the production scaler actually chose; recorded "
            "with the recommendation, never used to decide"
        ),
    )
    tenant_rates_rps: (
        dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], float] | None
    ) = Field(
        None,
        max_length=MAX_TENANTS_PER_REQUEST,
        description=(
            "request rate per tenant (req/s), e.g. from a gateway's metrics: the cluster's "
            "spend is allocated by each tenant's share; only metered, never used to decide"
        ),
    )
    shadow_only: bool = Field(
        False,
        description=(
            "decide and record, but never steer KEDA: the answer is not what KEDA reads for "
            "this cluster, and the policy memory is kept apart from the steering client's"
        ),
    )

    @field_validator("tenant_rates_rps")
    @classmethod
    def _no_pooled_tenant_name(cls, rates: dict[str, float] | None) -> dict[str, float] | None:
        if rates is not None and OTHER_TENANT in rates:
            raise ValueError(f"'{OTHER_TENANT}' is the name of the pooled tenants; not a tenant")
        return rates

    @classmethod
    def from_state(
        cls, state: ClusterState, *, timestamp: float | None = None, cluster_id: str = "default"
    ) -> RecommendationRequest:
        """The body a cluster in ``state`` would send (a simulated one, for replays and
        tests).

        ``timestamp`` defaults to now, so a live service takes the metrics as fresh; the time
        of week the service then sees is the wall clock's. To keep the state's own week clock,
        pass ``EPOCH_MONDAY_S + state.time_of_week_s`` (and give the service a matching clock).
        """
        if timestamp is None:
            timestamp = time.time()
        return cls(
            cluster_id=cluster_id,
            timestamp=timestamp,
            interval_s=state.interval_s,
            arrival_rate_rps=state.arrival_rate_rps,
            arrival_rate_ewma_rps=state.arrival_rate_ewma_rps,
            forecast_rps=state.forecast_rps,
            queue=state.queue,
            in_flight=state.in_flight,
            gpu_util=state.gpu_util,
            kv_util=state.kv_util,
            ttft_p50_s=state.ttft_p50_s,
            ttft_p95_s=state.ttft_p95_s,
            tpot_p95_s=state.tpot_p95_s,
            slo_attainment=state.slo_attainment,
            dropped=state.dropped,
            batch_queue=state.batch_queue,
            batch_arrival_rate_rps=state.batch_arrival_rate_rps,
            pools=[
                PoolMetrics(
                    name=p.name,
                    replicas=ReplicasByState(
                        provisioning=p.provisioning,
                        loading=p.loading,
                        ready=p.ready,
                        draining=p.draining,
                        standby=p.standby,
                        refilling=p.refilling,
                    ),
                    spot_price_usd_h=p.price_usd_h,
                    preempt_notices=p.preempt_notices,
                    spot_capacity_share=p.spot_capacity_share,
                    capacity_rps=p.capacity_rps,
                    batch_per_replica=p.batch_per_replica,
                )
                for p in state.pools
            ],
        )

    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "cluster_id": "prod-eu-1",
                    "timestamp": 1767225600.0,
                    "arrival_rate_rps": 42.5,
                    "arrival_rate_ewma_rps": 40.1,
                    "queue": 3,
                    "in_flight": 180,
                    "gpu_util": 0.93,
                    "kv_util": 0.41,
                    "ttft_p50_s": 0.35,
                    "ttft_p95_s": 1.2,
                    "tpot_p95_s": 0.045,
                    "slo_attainment": 0.995,
                    "pools": [
                        {"name": "h100", "replicas": {"ready": 2, "loading": 1, "standby": 1}},
                        {"name": "a100", "replicas": {"ready": 0}},
                        {
                            "name": "h100-spot",
                            "replicas": {"ready": 1},
                            "spot_price_usd_h": 2.35,
                            "preempt_notices": 0,
                        },
                    ],
                    "production_decision": {"h100": 3, "a100": 0, "h100-spot": 1},
                }
            ]
        },
    )


Source = Literal["policy", "fallback"]


class BudgetStatus(BaseModel):
    """Where one spend budget stands (reported only: budgets never change a decision)."""

    name: str
    period: Period
    tenant: str | None = Field(description="the tenant whose spend counts; null: all")
    cluster: str | None = Field(description="the cluster whose spend counts; null: all")
    limit_usd: float
    spend_usd: float = Field(description="spend counted in the current period so far")
    burn_rate_usd_h: float = Field(description="current cost rate of what the budget covers")
    projected_spend_usd: float = Field(
        description="spend at the period's end if the burn rate holds"
    )
    period_end_s: float = Field(description="when the current period ends (unix time, s)")
    as_of_s: float = Field(description="the metrics time the figures are as of (unix time, s)")
    projected_breach: bool = Field(description="the projected spend is over the limit")
    known: bool = Field(
        description=(
            "the figures are complete; false for a tenant budget while the cluster reports no "
            "per-tenant request rates (its spend is then a lower bound), and for any budget "
            "while a cluster it counts leaves a pool's replicas unreported or its spot price "
            "invalid (metered at the count the service holds the pool at, at the list price)"
        )
    )
    metered_since_s: float | None = Field(
        None,
        description=(
            "since when this period's spend is metered (unix time, s): the period's start "
            "when it is metered whole, later when the service started after the period "
            "began or a cluster it counts was silent past the staleness bound (spend before "
            "it is not all counted); null: nothing metered yet"
        ),
    )
    notes: list[str] = Field(default_factory=list, description="why a figure is incomplete")


class RecommendationResponse(BaseModel):
    """Replicas to run per pool, and where the numbers came from."""

    decision_id: str = Field(description="unique id of this decision (the shadow record's key)")
    cluster_id: str
    replicas: dict[str, int] = Field(
        description=(
            "target replicas (ready or starting) per pool; a pool whose current count is "
            "unknown and was never reported for this cluster has none (no_recommendation)"
        )
    )
    warm_pool: dict[str, int] = Field(description="stopped replicas to hold in reserve per pool")
    source: Source = Field(
        description="policy, or fallback when the rule-based scaler or a hold decided"
    )
    policy_version: str = Field(
        description="version of the deployed policy (also when the fallback decided)"
    )
    reasons: list[str] = Field(
        default_factory=list,
        description="why a guardrail or the fallback changed the policy's answer; empty if none",
    )
    causes: list[str] = Field(
        default_factory=list,
        description=(
            "the reasons as codes, for alerting and dashboards: " + ", ".join(c for c in Cause)
        ),
    )
    policy_reason: str = Field("", description="the deciding policy's own explanation")
    decided_at: float = Field(description="when the service decided (unix time, s)")
    shadow_recorded: bool = Field(
        False, description="the decision is durably in the shadow database"
    )
    budgets: list[BudgetStatus] = Field(
        default_factory=list,
        description=(
            "the spend budgets covering this cluster (``--budgets``): reported, never enforced"
        ),
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "decision_id": "0b6f3f0e6a6b4b1d9b1f4a7c2d9e8f10",
                    "cluster_id": "prod-eu-1",
                    "replicas": {"h100": 5, "a100": 0, "h100-spot": 0},
                    "warm_pool": {"h100": 0, "a100": 0, "h100-spot": 0},
                    "source": "policy",
                    "policy_version": "hpa@3f9a1c2b7d4e",
                    "reasons": ["h100: step up limited to +4 (asked 9, current 3)"],
                    "causes": ["step_up_limited"],
                    "policy_reason": "hpa: throughput 1.10/0.60 -> 9",
                    "decided_at": 1767225600.4,
                    "shadow_recorded": True,
                }
            ]
        }
    )
