"""The request's numbers, read once: what is wrong with them, and the usable state they give.

One table, :data:`RANGES`, says for every number of a request its valid range and, where it is
a constant, what a missing one means. :func:`read_request` walks the request once with it:
each value out of range or not finite is a problem (an ``invalid_input`` reason) and is clipped
into range (or replaced by its default when not finite), so the policy's view and the reasons
can never disagree about a limit.

Current replicas are special: a pool's count is *known* only when the request reports its
``replicas.ready`` (and every other state it gives is a valid count). An unknown count is never
taken as 0; the service holds the pool at its last known-good count, or gives no
recommendation for it when there is none (see ``serving/service.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from rlscale.agents.base import ClusterState, PoolState
from rlscale.envs.scenario import Scenario
from rlscale.serving.causes import Cause, Reason
from rlscale.serving.schemas import EPOCH_MONDAY_S, PoolMetrics, RecommendationRequest

MAX_RATE_RPS = 1e7
MAX_COUNT = 1e6
MAX_REPLICAS_PER_STATE = 1e5
MAX_LATENCY_S = 86400.0
MAX_INTERVAL_S = 86400.0
MAX_CLOCK_SKEW_S = 60.0
"""A timestamp this far in the future is out of range (clocks disagree by less)."""


@dataclass(frozen=True)
class Range:
    """A number's valid range; ``default`` stands in for a missing one (None: the caller's)."""

    low: float
    high: float
    default: float | None = None

    def holds(self, value: float) -> bool:
        """``value`` is finite and within the range."""
        return math.isfinite(value) and self.low <= value <= self.high

    def clip(self, value: float, default: float) -> float:
        """A usable number: non-finite -> ``default``, else clipped into the range."""
        if not math.isfinite(value):
            return default
        return min(max(value, self.low), self.high)


REPLICA_STATES = ("provisioning", "loading", "ready", "draining", "standby", "refilling")
"""The lifecycle states a pool's replicas are counted in (``ReplicasByState``)."""

RANGES: dict[str, Range] = {
    # the cluster
    "interval_s": Range(1e-3, MAX_INTERVAL_S),
    "arrival_rate_rps": Range(0.0, MAX_RATE_RPS),
    "arrival_rate_ewma_rps": Range(0.0, MAX_RATE_RPS),
    "forecast_rps": Range(0.0, MAX_RATE_RPS),
    "queue": Range(0.0, MAX_COUNT, 0.0),
    "in_flight": Range(0.0, MAX_COUNT, 0.0),
    "gpu_util": Range(0.0, 1.0, 0.0),
    "kv_util": Range(0.0, 1.0, 0.0),
    "ttft_p50_s": Range(0.0, MAX_LATENCY_S, 0.0),
    "ttft_p95_s": Range(0.0, MAX_LATENCY_S, 0.0),
    "tpot_p95_s": Range(0.0, MAX_LATENCY_S, 0.0),
    "slo_attainment": Range(0.0, 1.0, 1.0),
    "dropped": Range(0.0, MAX_COUNT, 0.0),
    # the batch class: checked only for a policy that observes it (batch_problems)
    "batch_queue": Range(0.0, MAX_COUNT),
    "batch_arrival_rate_rps": Range(0.0, MAX_RATE_RPS),
    # one pool
    **{state: Range(0.0, MAX_REPLICAS_PER_STATE, 0.0) for state in REPLICA_STATES},
    "spot_price_usd_h": Range(0.0, 1e4),
    "preempt_notices": Range(0.0, MAX_REPLICAS_PER_STATE, 0.0),
    "spot_capacity_share": Range(0.0, 1.0, 1.0),
    "capacity_rps": Range(1e-6, MAX_RATE_RPS),
    "batch_per_replica": Range(0.0, MAX_COUNT, 0.0),
}
"""Every number of a request: its valid range, and the constant that stands in for a missing
one (None where the default depends on the scenario or on other numbers)."""

REQUIRED = ("arrival_rate_rps",)
"""Metrics without which neither the policy nor the fallback decides (the others default)."""

BATCH_INPUTS = ("batch_queue", "batch_arrival_rate_rps")
"""The batch class's metrics: a policy trained with batch work decides only when both are
given and in range; any other policy ignores them."""


@dataclass(frozen=True)
class ReadRequest:
    """A request read against the scenario."""

    state: ClusterState
    """The policy's view: every number usable; a pool of unknown count at its last known-good
    count (0 when it has none: such a pool gets no recommendation)."""
    problems: list[Reason]
    """Stale, missing or invalid input; the policy decides only when empty."""
    current: dict[str, int | None]
    """Each pool's current replicas (ready or starting) as reported; None: unknown."""
    rate_ok: bool
    """The arrival rate is usable, so the fallback can decide."""
    metrics_time_s: float
    """When the metrics were measured, for staleness (-inf when the timestamp is unusable)."""
    batch_problems: tuple[Reason, ...] = ()
    """Batch inputs missing or out of range (``batch_unknown``): problems only for a policy
    that observes them. With any, the state carries no batch class (its batch fields at their
    defaults, 0), never a guessed or clipped backlog."""


class _Reader:
    """Reads numbers against :data:`RANGES`, collecting the problems."""

    def __init__(self) -> None:
        self.problems: list[Reason] = []

    def number(
        self, name: str, value: float | None, default: float | None = None, pool: str | None = None
    ) -> float:
        rng = RANGES[name]
        fallback = rng.default if default is None else default
        assert fallback is not None, f"{name} needs a default"
        if value is None:
            return fallback
        if not rng.holds(value):
            self.problems.append(Reason(Cause.INVALID_INPUT, f"{name} {value}", pool))
        return rng.clip(value, fallback)


def pool_current_replicas(pm: PoolMetrics | None) -> int | None:
    """The pool's replicas ready or starting, when the request reports them validly; else None.

    ``ready`` must be given; other states left out count 0; any state null, non-finite or out
    of range makes the count unknown.
    """
    if pm is None:
        return None
    total = 0.0
    for state in REPLICA_STATES:
        value = getattr(pm.replicas, state)
        if value is None or not RANGES[state].holds(value):
            return None
        if state in ("provisioning", "loading", "ready"):
            total += value
    return round(total)


def _batch_problems(request: RecommendationRequest) -> list[Reason]:
    """A ``batch_unknown`` reason for each batch input missing or out of range."""
    problems = []
    for name in BATCH_INPUTS:
        value = getattr(request, name)
        if value is None:
            problems.append(Reason(Cause.BATCH_UNKNOWN, f"({name} not in the request)"))
        elif not RANGES[name].holds(value):
            problems.append(Reason(Cause.BATCH_UNKNOWN, f"({name} {value} out of range)"))
    return problems


def read_request(
    request: RecommendationRequest,
    *,
    now: float,
    scenario: Scenario,
    capacity_rps: Mapping[str, float],
    last_known_good: Mapping[str, int],
    max_staleness_s: float,
) -> ReadRequest:
    """Read ``request`` once: its problems, the usable state, each pool's current count.

    :param capacity_rps: each pool's saturation throughput when the request gives none.
    :param last_known_good: the cluster's last known-good count per pool; a pool whose count
        is unknown is taken to run that many in the policy's view.
    """
    read = _Reader()
    problems = read.problems
    ts = request.timestamp
    metrics_time_s = ts if math.isfinite(ts) else -math.inf
    if not math.isfinite(ts):
        problems.append(Reason(Cause.INVALID_INPUT, f"timestamp {ts}"))
    elif now - ts > max_staleness_s:
        problems.append(
            Reason(Cause.STALE_METRICS, f"{now - ts:.0f} s old (max {max_staleness_s:g} s)")
        )
    elif ts - now > MAX_CLOCK_SKEW_S:
        problems.append(Reason(Cause.INVALID_INPUT, f"timestamp {ts - now:.0f} s in the future"))
        metrics_time_s = -math.inf
    for name in REQUIRED:
        if getattr(request, name) is None:
            problems.append(Reason(Cause.MISSING_INPUT, name))
    rate_given = request.arrival_rate_rps
    rate_ok = rate_given is not None and RANGES["arrival_rate_rps"].holds(rate_given)
    rate = read.number("arrival_rate_rps", rate_given, default=0.0)
    sc = scenario
    # the cluster's numbers whose default is a constant
    cluster = {
        name: read.number(name, getattr(request, name))
        for name, rng in RANGES.items()
        if rng.default is not None and name in RecommendationRequest.model_fields
    }
    interval_s = read.number("interval_s", request.interval_s, default=sc.control_interval_s)
    ewma = read.number("arrival_rate_ewma_rps", request.arrival_rate_ewma_rps, default=rate)
    # the simulator's forecast counts requests reaching the servers (after the cache)
    forecast = read.number(
        "forecast_rps", request.forecast_rps, default=rate * (1.0 - sc.workload.cache_hit_ratio)
    )

    known = {p.name: p for p in sc.pools}
    given: dict[str, PoolMetrics] = {}
    for pm in request.pools:
        if pm.name in given:
            problems.append(Reason(Cause.INVALID_INPUT, f"pool '{pm.name[:64]}' given twice"))
        elif pm.name not in known:
            problems.append(Reason(Cause.INVALID_INPUT, f"unknown pool '{pm.name[:64]}'"))
        else:
            given[pm.name] = pm
    current: dict[str, int | None] = {}
    pools = []
    for name, cfg in known.items():
        pm = given.get(name)
        count = pool_current_replicas(pm)
        current[name] = count
        if pm is None:
            problems.append(Reason(Cause.MISSING_INPUT, f"pool '{name}' not in the request"))
            pm = PoolMetrics(name=name)
        elif count is None:
            problems.append(Reason(Cause.MISSING_INPUT, "current replicas", pool=name))
        replicas = {}
        for state in REPLICA_STATES:
            value = getattr(pm.replicas, state)
            replicas[state] = read.number(state, value, pool=name)
        if count is None:  # the policy's view runs the pool at its last known-good count
            replicas = dict.fromkeys(REPLICA_STATES, 0.0)
            replicas["ready"] = float(last_known_good.get(name, 0))
        pools.append(
            PoolState(
                name=name,
                purchase=cfg.purchase,
                quota=cfg.quota,
                warm_pool_max=cfg.warm_pool_max,
                on_demand_price_usd_h=cfg.price_usd_h,
                price_usd_h=read.number(
                    "spot_price_usd_h", pm.spot_price_usd_h, cfg.price_usd_h, name
                ),
                capacity_rps=read.number("capacity_rps", pm.capacity_rps, capacity_rps[name], name),
                preempt_notices=read.number("preempt_notices", pm.preempt_notices, pool=name),
                spot_capacity_share=read.number(
                    "spot_capacity_share", pm.spot_capacity_share, pool=name
                ),
                batch_per_replica=read.number("batch_per_replica", pm.batch_per_replica, pool=name),
                serves=cfg.serves,
                **replicas,
            )
        )
    batch_problems = _batch_problems(request)
    batch: dict[str, float] = {}
    if not batch_problems:  # the batch class is in the state whole, or not at all
        batch = {name: float(getattr(request, name)) for name in BATCH_INPUTS}
        if sc.workload.batch is not None:
            batch["batch_deadline_s"] = sc.workload.batch.deadline_h * 3600.0
    time_s = min(max(ts, -1e12), 1e12) if math.isfinite(ts) else now
    state = ClusterState(
        time_s=time_s,
        # the epoch fell on a Thursday: Monday 00:00 UTC starts the week
        time_of_week_s=(time_s - EPOCH_MONDAY_S) % (7 * 86400.0),
        interval_s=interval_s,
        arrival_rate_rps=rate,
        arrival_rate_ewma_rps=ewma,
        forecast_rps=forecast,
        ttft_target_s=sc.slo.ttft_s,
        tpot_target_s=sc.slo.tpot_s,
        pools=tuple(pools),
        **cluster,
        **batch,
    )
    return ReadRequest(state, problems, current, rate_ok, metrics_time_s, tuple(batch_problems))
