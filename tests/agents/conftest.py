"""Fixtures of the policy tests: hand-built cluster states, and the azure-conv training split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from rlscale.agents.base import ClusterState, PoolState


def make_pool(
    name: str = "h100",
    *,
    purchase: str = "on_demand",
    ready: float = 2,
    starting: float = 0,
    quota: int = 64,
    capacity_rps: float = 10.0,
    price_usd_h: float = 4.0,
    preempt_notices: float = 0,
    spot_capacity_share: float = 1.0,
) -> PoolState:
    """One pool; ``starting`` replicas are counted as provisioning."""
    return PoolState(
        name=name,
        purchase=purchase,
        quota=quota,
        warm_pool_max=0,
        on_demand_price_usd_h=price_usd_h,
        price_usd_h=price_usd_h * (0.4 if purchase == "spot" else 1.0),
        capacity_rps=capacity_rps,
        provisioning=starting,
        ready=ready,
        preempt_notices=preempt_notices,
        spot_capacity_share=spot_capacity_share,
    )


def make_state(
    *pools: PoolState,
    t: float = 0.0,
    rate: float = 0.0,
    ewma: float | None = None,
    forecast: float = 0.0,
    queue: float = 0.0,
    in_flight: float = 0.0,
    kv_util: float = 0.0,
    time_of_week_s: float | None = None,
    interval_s: float = 30.0,
) -> ClusterState:
    """A cluster state at ``t`` seconds; one default on-demand pool when none is given."""
    return ClusterState(
        time_s=t,
        time_of_week_s=t if time_of_week_s is None else time_of_week_s,
        interval_s=interval_s,
        arrival_rate_rps=rate,
        arrival_rate_ewma_rps=rate if ewma is None else ewma,
        forecast_rps=forecast,
        queue=queue,
        in_flight=in_flight,
        gpu_util=1.0 if in_flight > 0 else 0.0,
        kv_util=kv_util,
        ttft_p50_s=0.1,
        ttft_p95_s=0.2,
        tpot_p95_s=0.02,
        slo_attainment=1.0,
        dropped=0.0,
        ttft_target_s=2.0,
        tpot_target_s=0.1,
        pools=pools or (make_pool(),),
    )


def follow(state: ClusterState, replicas: dict[str, int]) -> ClusterState:
    """``state`` with every pool's replicas set to the decision's (all ready at once)."""
    pools = tuple(
        replace(p, ready=float(replicas.get(p.name, p.ready)), provisioning=0.0, loading=0.0)
        for p in state.pools
    )
    return replace(state, pools=pools)


@dataclass(frozen=True)
class Builders:
    """The state builders of this folder, handed to tests as one fixture."""

    pool: Callable[..., PoolState] = make_pool
    state: Callable[..., ClusterState] = make_state
    follow: Callable[[ClusterState, dict[str, int]], ClusterState] = follow


@pytest.fixture
def build() -> Builders:
    """:func:`make_pool`, :func:`make_state` and :func:`follow`."""
    return Builders()


@pytest.fixture(scope="session")
def azure_conv() -> dict[str, Any]:
    """The azure-conv scenario fitted to its train / held-out split, its split and a simulator."""
    from rlscale.envs.scenario import load_scenario
    from rlscale.envs.simulator import ClusterSimulator
    from rlscale.envs.splits import split_scenario

    scenario, split = split_scenario(load_scenario("azure-conv"))
    return {"scenario": scenario, "split": split, "sim": ClusterSimulator(scenario, 1)}
