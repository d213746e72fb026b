"""The one interface of everything that decides: baselines, the oracle's replay, PPO, ONNX.

A policy is a pure function of the cluster's state and its own carried memory:

    decision, memory = policy.decide(state, memory)

``memory`` is a JSON-serializable dict (hysteresis, windows, histories) that travels explicitly,
so a policy object holds only its configuration, can be reset by starting from
``policy.initial_memory()``, and can be checkpointed or shipped to the decision service as
JSON. The same object runs in offline evaluation and in the live service.

The state is raw cluster metrics (rates in req/s, latencies in seconds, replica counts), not
the env's normalized observation, because that is what a live cluster reports; policies that
need the normalized vector (PPO) build it from the state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

Memory = dict[str, Any]


@dataclass(frozen=True)
class PoolState:
    """One pool's replicas and market, as the cluster reports them."""

    name: str
    purchase: str
    quota: int
    warm_pool_max: int
    on_demand_price_usd_h: float
    price_usd_h: float
    capacity_rps: float
    """Requests/s one ready replica sustains at saturation for the current request mix."""
    provisioning: float = 0.0
    loading: float = 0.0
    ready: float = 0.0
    draining: float = 0.0
    standby: float = 0.0
    refilling: float = 0.0
    preempt_notices: float = 0.0
    spot_capacity_share: float = 1.0
    batch_per_replica: float = 0.0
    max_num_seqs: int = 256
    serves: str = "all"
    """Request classes the pool admits: ``all``, ``interactive`` or ``batch``."""

    @property
    def starting(self) -> float:
        """Replicas requested but not yet ready."""
        return self.provisioning + self.loading

    @property
    def desired(self) -> float:
        """Replicas the pool is heading to: ready or starting (draining ones are leaving)."""
        return self.provisioning + self.loading + self.ready


@dataclass(frozen=True)
class BudgetState:
    """The observed spend budget's current period: what a budget-aware policy sees of it
    (the simulator's ledger or the decision service's spend meter fills it)."""

    name: str
    spend_usd: float
    """Spend counted in the current period so far."""
    limit_usd: float
    time_left_s: float
    """Time left in the current period."""
    period_s: float
    """Length of the current period."""


@dataclass(frozen=True)
class ClusterState:
    """What a policy sees at a decision: load, latency, replicas per pool, prices, time."""

    time_s: float
    time_of_week_s: float
    interval_s: float
    arrival_rate_rps: float
    arrival_rate_ewma_rps: float
    forecast_rps: float
    queue: float
    in_flight: float
    gpu_util: float
    kv_util: float
    ttft_p50_s: float
    ttft_p95_s: float
    tpot_p95_s: float
    slo_attainment: float
    dropped: float
    ttft_target_s: float
    tpot_target_s: float
    pools: tuple[PoolState, ...] = field(default_factory=tuple)
    budget: BudgetState | None = None
    """The observed budget, for a policy trained with one; None: none observed or known."""
    batch_queue: float = 0.0
    """Batch requests waiting (request class ``batch``); the interactive ``queue`` excludes
    them."""
    batch_arrival_rate_rps: float = 0.0
    batch_deadline_s: float = 0.0
    """The batch requests' completion window; 0 when the service has no batch work."""

    def pool(self, name: str) -> PoolState:
        """The pool of that name."""
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(f"unknown pool '{name}'; known: {[p.name for p in self.pools]}")

    @property
    def ready_replicas(self) -> float:
        """Ready replicas over all pools."""
        return sum(p.ready for p in self.pools)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the decision service's request body has the same fields)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ClusterState:
        """Inverse of :meth:`to_dict`."""
        pools = tuple(PoolState(**p) for p in raw.get("pools", ()))
        budget = raw.get("budget")
        budget = BudgetState(**budget) if isinstance(budget, dict) else budget
        return cls(**{**raw, "pools": pools, "budget": budget})


@dataclass(frozen=True)
class Decision:
    """Target replicas (ready or starting) per pool, and warm-pool size per pool."""

    replicas: dict[str, int]
    warm_pool: dict[str, int] = field(default_factory=dict)
    reason: str = ""


@runtime_checkable
class Policy(Protocol):
    """Anything that decides; see the module docstring."""

    name: str

    def initial_memory(self) -> Memory:
        """The carried state at the start of an episode (a JSON-serializable dict)."""
        ...

    def decide(self, state: ClusterState, memory: Memory) -> tuple[Decision, Memory]:
        """The decision for ``state`` and the memory to carry to the next decision."""
        ...

    def config(self) -> dict[str, Any]:
        """The policy's parameters, JSON-serializable (what tuning searches and saves)."""
        ...


def dump_memory(memory: Memory) -> str:
    """Memory as JSON; fails loudly on anything JSON cannot hold."""
    return json.dumps(memory, allow_nan=False, sort_keys=True)


def load_memory(text: str) -> Memory:
    """Inverse of :func:`dump_memory`."""
    return json.loads(text)


def decision_to_action(
    decision: Decision, state: ClusterState, pool_names: list[str], max_step: int
) -> np.ndarray:
    """The env action that moves each pool toward its target, bounded by ``max_step``.

    Replica change = target - (ready + starting), clipped to [-max_step, max_step]; the
    warm-pool entry is the target size clipped to the pool's maximum.
    """
    n = len(pool_names)
    action = np.zeros(2 * n, dtype=np.int64)
    for j, name in enumerate(pool_names):
        pool = state.pool(name)
        target = decision.replicas.get(name, round(pool.desired))
        target = int(min(max(target, 0), pool.quota))
        delta = round(target - pool.desired)
        action[j] = max(-max_step, min(max_step, delta)) + max_step
        warm = int(decision.warm_pool.get(name, 0))
        action[n + j] = max(0, min(warm, pool.warm_pool_max))
    return action
